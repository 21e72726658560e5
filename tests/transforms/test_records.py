"""Transform records round-trip through the manifest's JSON and refuse what they do not know."""

import json

import pytest

from big2small.errors import Big2SmallError
from big2small.transforms.records import (
    RECORDS, ChannelRemovalRecord, DistillRecord, FoldRecord, LayerDropRecord, TransformRecord,
)

EXAMPLES = [
    ChannelRemovalRecord({"conv1": 3, "conv2": 0}),
    FoldRecord({"sparsity": 0.3}, None, 0.3, 100, 70, 1000, 600, 1.5, True, [{"name": "g", "units_before": 4}]),
    DistillRecord(12, "steps", 3.5, 0.9, 0.4, 0.8, 0.3, 24, {"steps": 12, "source": "self"}, "scales of 7 tensors"),
    LayerDropRecord(6, [0, 1, 3, 5], "influence", [0.1, 0.02, 0.3, 0.01, 0.2, 0.4], 1000, 700),
]


def test_a_distill_record_written_before_trained_existed_reads_as_weights():
    data = DistillRecord(12, "steps", 3.5, 0.9, 0.4, 0.8, 0.3, 24, {}).to_dict()
    del data["trained"]
    assert TransformRecord.from_dict(data).trained == "weights"


def test_every_kind_has_an_example():
    assert {type(r) for r in EXAMPLES} == set(RECORDS.values())


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: r.kind)
def test_records_round_trip_through_json(record):
    data = json.loads(json.dumps(record.to_dict()))
    assert data["transform"] == record.kind
    assert TransformRecord.from_dict(data) == record


@pytest.mark.parametrize("data, match", [
    ({"transform": "rotate"}, "unknown transform record 'rotate'"),
    ("fold", "unknown transform record"),
    ({"transform": "selfcompress_channel_removal"}, "expected"),
    ({"transform": "selfcompress_channel_removal", "removed_channels": {}, "extra": 1}, "expected"),
])
def test_unknown_kinds_and_fields_are_refused(data, match):
    with pytest.raises(Big2SmallError, match=match):
        TransformRecord.from_dict(data)
