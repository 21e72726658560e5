"""Compressing checkpoints bigger than we would like to hold: peak memory against checkpoint size,
throughput on 1 and 2 worker processes and on Ray, and resumption after a kill.

The checkpoints are synthetic and Llama-shaped (TinyLlama-1.1B's widths: hidden 2048, MLP 5632,
32 heads, 4 KV heads, vocabulary 32000; random fp16 weights, std 0.02), written as Hugging Face
directories in shards of about 500 MB under /tmp (not committed), with the number of layers
setting the size. Every run is the command line, `big2small compress DIR -o OUT --bits 4
--group-size 64`, in a subprocess; its wall time is end to end (start-up, plan, encode, write)
and its peak resident memory is the largest sum of VmRSS over the process and all its children,
sampled every 0.1 s.

    memory      1 worker (in the process), two checkpoint sizes
    throughput  the smaller checkpoint on 1 worker and on 2 worker processes, each PyTorch on one
                thread (OMP_NUM_THREADS=1 for the single worker, as the pool's workers have),
                on Ray started on this machine with 2 CPUs by the command (`--ray local`: Ray's
                start-up is in the row), and on a Ray instance already running on this machine
                (`ray start --head --num-cpus 2` before the timed run; `--ray auto`, the way a
                cluster is used); for two codecs: uniform (the
                command above: cheap per weight, so the driver's fixed costs weigh) and hyper
                (`--method hyper --bits 4 --group-size 64`: encoding dominates)
    resume      a small Llama-shaped checkpoint: the command killed (SIGKILL) once a random number
                of its units is on disk, run again, its bytes compared with an uninterrupted
                run's (20 trials)

Writes benchmarks/results/scale/scale.md and scale.json. Run: `nice python benchmarks/scale.py`
(about 20 minutes on 2 busy cores; --quick: small checkpoints only, to try it out).
`--throughput-only` measures the throughput rows again and keeps the other rows of scale.json:
about a minute for the uniform rows on an idle 2-core machine once the checkpoint is in /tmp
(writing it takes a minute or two more), about 12 minutes more for the hyper rows (`--codecs
uniform` measures the uniform rows alone and keeps scale.json's hyper rows). Before the timed runs the checkpoint is opened once, untimed, so that
each run finds its skeleton's description cached (big2small.models.skeleton), as every run after
the first on a config does.

`--readers` measures the other commands instead, on the same checkpoints: the peak resident
memory (process tree, as above) of a sharded compress (`--max-shard-size 500MB`, 1 worker), of
`decompress --dtype float16` (a dense fp16 file), of `verify` (against the checkpoint, read tensor
by tensor) and of `b2s.restore(artifact)` in a fresh interpreter (the dense fp32 model it
returns is part of its peak), beside the resident memory of an interpreter that has only imported
PyTorch, transformers and big2small. Writes readers.md and readers.json (`--work DIR`: where the
checkpoints and artifacts go, default /tmp/big2small-scale).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "scale"
WORK = Path("/tmp/big2small-scale")
SHARD_BYTES = 500_000_000
COMMAND = ["--bits", "4", "--group-size", "64"]
# The throughput rows' codecs: the command's options after the checkpoint and output.
CODECS = {"uniform": COMMAND, "hyper": ["--method", "hyper", *COMMAND]}


def llama_tensors(layers: int, hidden: int = 2048, mlp: int = 5632, vocab: int = 32000, heads: int = 32,
                  kv_heads: int = 4) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a LlamaForCausalLM of these widths, in its order."""
    kv = hidden // heads * kv_heads
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.k_proj.weight", (kv, hidden)),
                (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "mlp.gate_proj.weight", (mlp, hidden)), (p + "mlp.up_proj.weight", (mlp, hidden)),
                (p + "mlp.down_proj.weight", (hidden, mlp)), (p + "input_layernorm.weight", (hidden,)),
                (p + "post_attention_layernorm.weight", (hidden,))]
    return out + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def make_checkpoint(path: Path, layers: int, **widths: int) -> tuple[int, int]:
    """Write the checkpoint (if not there yet); return (parameters, bytes of its largest tensor in fp16)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    tensors = llama_tensors(layers, **widths)
    n_params = sum(math.prod(s) for _, s in tensors)
    largest = max(math.prod(s) for _, s in tensors) * 2
    if (path / "model.safetensors.index.json").is_file():
        return n_params, largest
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    hidden, mlp = widths.get("hidden", 2048), widths.get("mlp", 5632)
    LlamaConfig(vocab_size=widths.get("vocab", 32000), hidden_size=hidden, intermediate_size=mlp,
                num_hidden_layers=layers, num_attention_heads=widths.get("heads", 32),
                num_key_value_heads=widths.get("kv_heads", 4), tie_word_embeddings=False,
                architectures=["LlamaForCausalLM"], torch_dtype="float16").to_json_file(path / "config.json")
    g = torch.Generator().manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in tensors:
        t = torch.ones(shape, dtype=torch.float16) if len(shape) == 1 else (torch.randn(shape, generator=g) * 0.02).half()
        if shards[-1] and size + t.numel() * 2 > SHARD_BYTES:
            _flush(path, shards, save_file)
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * 2
    _flush(path, shards, save_file)
    n = len(shards)
    weight_map = {}
    for k in range(1, n + 1):
        tmp = path / f"shard-{k}.safetensors"
        final = f"model-{k:05d}-of-{n:05d}.safetensors"
        tmp.rename(path / final)
        from safetensors import safe_open
        with safe_open(str(path / final), "pt") as f:
            weight_map.update({key: final for key in f.keys()})
    index = {"metadata": {"total_size": n_params * 2}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return n_params, largest


def _flush(path: Path, shards: list[dict[str, torch.Tensor]], save_file) -> None:
    save_file(shards[-1], str(path / f"shard-{len(shards)}.safetensors"), metadata={"format": "pt"})
    shards[-1].clear()


def _tree_rss(pids: list[int], cpu: dict[int, float] | None = None) -> int:
    """Bytes resident in `pids` and all their descendants (each counted once); with `cpu`, each
    one's CPU seconds so far (user + system) are recorded in it by process id."""
    total, stack, seen = 0, list(pids), set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024
            if cpu is not None:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                cpu[p] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run(model: Path, out: Path, extra: list[str], env: dict[str, str] | None = None,
        kill_at_units: int | None = None, command: list[str] = COMMAND,
        also: Callable[[], list[int]] | None = None) -> dict:
    """The compress command (options `command`) on `model`: wall seconds and peak memory; with
    `kill_at_units`, killed (SIGKILL) as soon as that many units are on disk in its resume directory;
    `also`: see measure."""
    cmd = [sys.executable, "-m", "big2small.cli", "compress", str(model), "-o", str(out), "--overwrite", *command, *extra]
    return measure(cmd, env, resume=out.with_name(f".{out.name}.resume"), kill_at_units=kill_at_units, also=also)


def measure(cmd: list[str], env: dict[str, str] | None = None, *, resume: Path | None = None,
            kill_at_units: int | None = None, also: Callable[[], list[int]] | None = None) -> dict:
    """Run `cmd`: wall seconds, the peak resident memory of its process tree (bytes, sampled
    every 0.1 s) and the CPU seconds of the command's own process (the driver) and of its
    descendants (workers; as last sampled, so up to 0.1 s of each is missed); with
    `kill_at_units`, killed (SIGKILL) once that many unit files are in `resume`. `also`: other
    processes that work for the command (a running Ray instance's), counted with their descendants
    in the memory and in the workers' CPU (only the CPU they use while the command runs)."""
    roots = also or (lambda: [])
    cpu: dict[int, float] = {}
    _tree_rss(roots(), cpu)
    before = dict(cpu)  # the running processes' CPU so far, not the command's
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    killed = False
    while proc.poll() is None:
        if kill_at_units is not None:
            if len(list(resume.glob("unit-*.safetensors"))) >= kill_at_units:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
            continue
        peak = max(peak, _tree_rss([proc.pid, *roots()], cpu))
        time.sleep(0.1)
    stderr = proc.communicate()[1].decode(errors="replace")
    wall = time.monotonic() - start
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    driver = cpu.pop(proc.pid, 0.0)
    return {"wall_s": wall, "peak_tree_rss_bytes": peak, "killed": killed and proc.returncode != 0,
            "driver_cpu_s": driver, "workers_cpu_s": sum(t - before.get(p, 0.0) for p, t in cpu.items())}


def artifact_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def resume_trials(trials: int, seed: int = 0) -> dict:
    """Each trial kills the command once a random number of units (1 to all but one) is on disk,
    runs it again, and compares the artifact's bytes with an uninterrupted run's."""
    model = WORK / "llama-small"
    n_params, _ = make_checkpoint(model, layers=4, hidden=512, mlp=1408, vocab=2000, heads=8, kv_heads=2)
    n_units = len(llama_tensors(4, hidden=512, mlp=1408, vocab=2000, heads=8, kv_heads=2))
    clean = run(model, WORK / "clean.b2s", ["--workers", "1"])
    reference = artifact_digest(WORK / "clean.b2s")
    rng = random.Random(seed)
    rows = []
    for k in range(trials):
        out = WORK / "resumed.b2s"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.with_name(f".{out.name}.resume"), ignore_errors=True)
        at = rng.randint(1, n_units - 1)
        first = run(model, out, ["--workers", "1"], kill_at_units=at)
        units = len(list(out.with_name(f".{out.name}.resume").glob("unit-*.safetensors")))
        second = run(model, out, ["--workers", "1"])
        rows.append({"trial": k, "kill_at_units": at, "killed": first["killed"], "units_on_disk": units,
                     "same_bytes": artifact_digest(out) == reference, "rerun_s": second["wall_s"]})
        print(f"resume trial {k}: killed={first['killed']} with {units} of {n_units} units on disk, "
              f"same={rows[-1]['same_bytes']}", flush=True)
        done = {"n_parameters": n_params, "n_units": n_units, "clean_s": clean["wall_s"], "trials": rows}
        (OUT / "resume-partial.json").write_text(json.dumps(done, indent=1))  # --table-only can use them
    (OUT / "resume-partial.json").unlink(missing_ok=True)
    return done


RESTORE = """
import sys
import big2small as b2s
model = b2s.restore(sys.argv[1])
assert not any(p.is_meta for p in model.parameters())
"""
IMPORTS = "import torch, transformers, big2small, big2small.cli.commands; from transformers import LlamaForCausalLM"


def reader_rows(sizes: dict[str, int], compare_src: Path | None = None) -> dict:
    """Peak memory of a sharded compress, decompress, verify and restore for each checkpoint size
    (see the module docstring); with `compare_src` (the src/ of an earlier big2small), also
    restore with that code, for the first size only (it may need twice the memory)."""
    cli = [sys.executable, "-m", "big2small.cli"]
    result = {"load_average_at_start": os.getloadavg(), "cpus": os.cpu_count(), "rows": []}
    result["imports"] = measure([sys.executable, "-c", IMPORTS])
    for label, layers in sizes.items():
        model = WORK / f"llama-{label}"
        n_params, largest = make_checkpoint(model, layers)
        art = WORK / f"readers-{label}.b2s"
        steps = [("compress (sharded, 500 MB)", cli + ["compress", str(model), "-o", str(art), "--overwrite", *COMMAND,
                                                      "--workers", "1", "--max-shard-size", "500MB"]),
                 ("decompress --dtype float16", cli + ["decompress", str(art), str(WORK / "dense.safetensors"),
                                                       "--overwrite", "--dtype", "float16"]),
                 ("verify (against the checkpoint)", cli + ["verify", str(art)]),
                 ("restore (Python, dense fp32 model)", [sys.executable, "-c", RESTORE, str(art)])]
        figures = dict(model=label, n_parameters=n_params, checkpoint_bytes=n_params * 2, largest_tensor_bytes=largest)
        for step, cmd in steps:
            row = measure(cmd, {"OMP_NUM_THREADS": "1"})
            row.update(figures, step=step, load_average=os.getloadavg())
            if step.startswith("compress"):
                files = sorted(art.glob("tensors-*.safetensors")) or [art / "tensors.safetensors"]
                row.update(artifact_files=len(files), artifact_bytes=sum(f.stat().st_size for f in files))
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            (OUT / "readers-partial.json").write_text(json.dumps(result, indent=1))
        if compare_src is not None and label == list(sizes)[0]:
            single = WORK / f"readers-{label}-single.b2s"  # earlier code reads no shards: the same artifact unsharded
            subprocess.run([sys.executable, "-c", "import sys, big2small as b2s; "
                            "b2s.save(b2s.load(sys.argv[1]), sys.argv[2], overwrite=True)", str(art), str(single)], check=True)
            row = measure([sys.executable, "-c", RESTORE, str(single)], {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(compare_src)})
            row.update(figures, step=f"restore with the code before fill.py ({compare_src.name})",
                       load_average=os.getloadavg())
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        (WORK / "dense.safetensors").unlink(missing_ok=True)
    result["load_average_at_end"] = os.getloadavg()
    return result


def readers_table(r: dict) -> str:
    gb = 1e9
    lines = ["# Scale: peak memory of compress (sharded), decompress, verify and restore", "",
             f"Measured on a shared machine ({r['cpus']} cores, other engineers' jobs running at the same time): load "
             f"average {r['load_average_at_start'][0]:.1f} at the start, {r['load_average_at_end'][0]:.1f} at the end, "
             "so wall times are not throughput figures. Synthetic Llama-shaped fp16 checkpoints (TinyLlama widths, "
             "`benchmarks/scale.py`), each command in a fresh process with OMP_NUM_THREADS=1; peak resident memory "
             "of its process tree, sampled every 0.1 s (a peak shorter than that can be missed). "
             f"An interpreter that has only imported PyTorch, transformers and big2small holds "
             f"{r['imports']['peak_tree_rss_bytes'] / gb:.2f} GB.", "",
             "| checkpoint | parameters | fp16 on disk | fp32 | command | peak RSS | wall | load avg |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for m in r["rows"]:
        step = m["step"]
        if "artifact_files" in m:
            step += f": {m['artifact_files']} tensor file(s), {m['artifact_bytes'] / gb:.2f} GB"
        lines.append(f"| {m['model']} | {m['n_parameters'] / 1e9:.2f} B | {m['checkpoint_bytes'] / gb:.2f} GB | "
                     f"{m['n_parameters'] * 4 / gb:.2f} GB | {step} | {m['peak_tree_rss_bytes'] / gb:.2f} GB | "
                     f"{m['wall_s']:.0f} s | {m['load_average'][0]:.1f} |")
    base = r["imports"]["peak_tree_rss_bytes"]
    lines += ["", "Restore's peak beyond the imported interpreter and the restored fp32 model itself (what a restore "
              "needs on top of the model it returns; the largest tensor, the embedding, is "
              f"{r['rows'][0]['largest_tensor_bytes'] / gb:.2f} GB in fp16, twice that in fp32):", ""]
    for m in r["rows"]:
        if m["step"].startswith("restore"):
            extra = m["peak_tree_rss_bytes"] - base - m["n_parameters"] * 4
            lines.append(f"- {m['model']}, {m['step']}: {extra / gb:.2f} GB "
                         f"({extra / (m['n_parameters'] * 4):.2f}x the fp32 model)")
    return "\n".join(lines) + "\n"


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small checkpoints only (tries the script out)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--resume-only", action="store_true",
                        help="run the resume trials only, with the memory and throughput rows of an earlier run (partial.json)")
    parser.add_argument("--table-only", action="store_true",
                        help="write the tables from the rows and resume trials saved so far")
    parser.add_argument("--readers", action="store_true",
                        help="measure a sharded compress, decompress, verify and restore instead (readers.md)")
    parser.add_argument("--sizes", default=None, help="with --readers: which checkpoints, e.g. 0.6B,1.1B")
    parser.add_argument("--throughput-only", action="store_true",
                        help="measure the throughput rows again (on an idle machine), keeping scale.json's memory and resume rows")
    parser.add_argument("--codecs", default=",".join(CODECS),
                        help=f"the throughput rows' codecs, of {', '.join(CODECS)} (uniform comes first: the estimates use it)")
    parser.add_argument("--work", type=Path, default=WORK, help="where checkpoints and outputs go")
    parser.add_argument("--compare-src", type=Path, default=None,
                        help="with --readers: also restore the first size with the big2small at this src/ directory")
    args = parser.parse_args()
    WORK = args.work
    codecs = args.codecs.split(",")
    if codecs[0] != "uniform" or not set(codecs) <= set(CODECS):
        parser.error(f"--codecs: uniform first, then any of {', '.join(CODECS)}; got {args.codecs}")
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.readers and args.table_only:
        (OUT / "readers.md").write_text(readers_table(json.loads((OUT / "readers.json").read_text())))
        return
    if args.readers:
        all_sizes = {"small": 2, "large": 4} if args.quick else {"0.6B": 11, "1.1B": 22}
        sizes = {k: v for k, v in all_sizes.items() if args.sizes is None or k in args.sizes.split(",")}
        result = reader_rows(sizes, args.compare_src)
        (OUT / "readers.json").write_text(json.dumps(result, indent=1) + "\n")
        (OUT / "readers.md").write_text(readers_table(result))
        (OUT / "readers-partial.json").unlink(missing_ok=True)
        print(readers_table(result))
        return
    if args.table_only:  # the trials done so far, when a run had to stop early (the table says how many)
        result = json.loads((OUT / "partial.json").read_text())
        result["resume"] = json.loads((OUT / "resume-partial.json").read_text())
        finish(result)
        (OUT / "resume-partial.json").unlink(missing_ok=True)
        return
    if args.resume_only:
        result = json.loads((OUT / "partial.json").read_text())
        result["resume"] = resume_trials(args.trials)
        finish(result)
        return
    sizes = {"small": 2, "large": 4} if args.quick else {"0.6B": 11, "1.1B": 22}
    if args.throughput_only:
        result = json.loads((OUT / "scale.json").read_text())
        result["throughput_load_average_at_start"] = os.getloadavg()
        model = WORK / f"llama-{list(sizes)[0]}"
        n_params, _ = make_checkpoint(model, list(sizes.values())[0])
        throughput_rows(model, n_params, result, codecs)
        finish(result, end_key="throughput_load_average_at_end")  # the header's loads stay the full run's
        return
    result = {"load_average_at_start": os.getloadavg(), "cpus": os.cpu_count(), "memory": [], "throughput": []}
    for label, layers in sizes.items():
        model = WORK / f"llama-{label}"
        n_params, largest = make_checkpoint(model, layers)
        row = run(model, WORK / "out.b2s", ["--workers", "1"])
        row.update(model=label, n_parameters=n_params, checkpoint_bytes=n_params * 2, largest_tensor_bytes=largest,
                   target_bytes=1.5e9 + 3 * largest, load_average=os.getloadavg())
        result["memory"].append(row)
        print(json.dumps(row), flush=True)
        (OUT / "partial.json").write_text(json.dumps(result, indent=1))
    result["throughput"] = throughput_rows(WORK / f"llama-{list(sizes)[0]}", result["memory"][0]["n_parameters"], result,
                                           codecs)
    result["resume"] = resume_trials(args.trials)
    finish(result)


# The executor label of the row that joins a Ray instance already running on this machine, as a
# cluster's users do (`ray start` happened before): the row without Ray's start-up.
RAY_RUNNING = "Ray, already running (2 CPUs)"
RAY_START = ["start", "--head", "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"]

EXECUTORS = [("1 worker (1 thread)", ["--workers", "1"], {"OMP_NUM_THREADS": "1"}),
             ("2 worker processes", ["--workers", "2"], None),
             ("Ray, local, 2 CPUs", ["--workers", "2", "--ray", "local"], None),
             (RAY_RUNNING, ["--ray", "auto"], None)]


def throughput_rows(small: Path, n_small: int, result: dict, codecs: list[str]) -> list[dict]:
    """End-to-end compress of one checkpoint with each codec at 1 worker, 2 worker processes and
    Ray on this machine. The checkpoint is opened once first, untimed, so that every timed run
    finds its skeleton's description in the cache (big2small.models.skeleton), as any run after
    the first does."""
    warm_skeleton_cache(small)
    # The other codecs' rows (of an earlier run) stay, in CODECS' order.
    result["throughput"] = [t for t in result.get("throughput", []) if _codec(t) not in codecs]
    for codec in codecs:
        for label, extra, env in EXECUTORS:
            with ray_running() if label == RAY_RUNNING else contextlib.nullcontext() as cluster:
                load_before = os.getloadavg()
                row = run(small, WORK / "out.b2s", extra, env=env, command=CODECS[codec], also=cluster)
            row.update(codec=codec, command=" ".join(CODECS[codec]), executor=label, n_parameters=n_small,
                       weights_per_s=n_small / row["wall_s"], load_average_before=load_before,
                       load_average=os.getloadavg())
            result["throughput"].append(row)
            result["throughput"].sort(key=lambda t: list(CODECS).index(_codec(t)))  # stable: executors' order kept
            print(json.dumps(row), flush=True)
            (OUT / "partial.json").write_text(json.dumps(result, indent=1))
    return result["throughput"]


@contextlib.contextmanager
def ray_running() -> Iterator[Callable[[], list[int]]]:
    """A Ray instance on this machine (`ray start --head`, untimed), stopped at the end of the block;
    yields a function listing its processes (the daemons and the workers it starts), whose CPU the
    row counts as its workers'. Waits a few seconds after the start, as a cluster would have been
    up for a while (its idle workers started)."""
    ray = Path(sys.executable).with_name("ray")
    before = set(_pids())
    subprocess.run([str(ray), *RAY_START], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemons = [p for p in _pids() if p not in before]
    time.sleep(10)
    try:
        yield lambda: daemons
    finally:
        subprocess.run([str(ray), "stop"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def warm_skeleton_cache(model: Path) -> None:
    """Open `model` in a subprocess, so that its skeleton's description is cached (the first run
    on a config builds it, importing transformers: seconds a later run does not pay)."""
    code = "import sys; from big2small.models.checkpoint import open_checkpoint; open_checkpoint(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(model)], check=True)


def finish(result: dict, end_key: str = "load_average_at_end") -> None:
    result[end_key] = os.getloadavg()
    (OUT / "scale.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "scale.md").write_text(table(result))
    (OUT / "partial.json").unlink(missing_ok=True)
    print(table(result))


def table(r: dict) -> str:
    gb = 1e9
    lines = ["# Scale: memory, throughput, resume", "",
             f"Measured on a shared machine ({r['cpus']} cores, other engineers' jobs running): load average "
             f"{r['load_average_at_start'][0]:.1f} at the start, {r['load_average_at_end'][0]:.1f} at the end. "
             "Synthetic Llama-shaped fp16 checkpoints (TinyLlama widths), 500 MB shards; "
             f"`big2small compress DIR {' '.join(COMMAND)}`, end to end.", "",
             "## Peak resident memory (1 worker)", "",
             "| checkpoint | parameters | fp16 on disk | fp32 | largest tensor (fp16) | peak RSS (process tree) | target 1.5 GB + 3x largest | wall | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in r["memory"]:
        lines.append(f"| {m['model']} | {m['n_parameters'] / 1e9:.2f} B | {m['checkpoint_bytes'] / gb:.2f} GB | "
                     f"{m['n_parameters'] * 4 / gb:.2f} GB | {m['largest_tensor_bytes'] / gb:.3f} GB | "
                     f"{m['peak_tree_rss_bytes'] / gb:.2f} GB | {m['target_bytes'] / gb:.2f} GB | {m['wall_s']:.0f} s | "
                     f"{m['load_average'][0]:.1f} |")
    rows = r["throughput"]
    lines += ["", f"## Throughput ({rows[0]['n_parameters'] / 1e9:.2f} B parameters, end to end)", "",
              "Two codecs on the same checkpoint: uniform (`" + " ".join(CODECS["uniform"]) + "`), cheap per weight, "
              "and hyper (`" + " ".join(CODECS["hyper"]) + "`), whose encoding costs far more per weight. "
              "CPU seconds: of the command's own process (the driver: start-up, opening the model, planning, "
              "assembling the artifact; with 1 worker, the encoding too) and of its worker processes (Ray's "
              "daemons included), sampled every 0.1 s. The driver's share of the CPU is the part of the work "
              "that more workers do not speed up. \"Ray, local\" starts Ray on this machine inside the command "
              "(`--ray local`) and stops it at the end, so its start-up (its daemons, about 5 s) is in the row; "
              f"\"{RAY_RUNNING}\" joins an instance started before (`ray {' '.join(RAY_START[:4])}`, untimed; the "
              "command's `--ray auto`), as on a cluster: its CPU column counts that instance's processes while "
              f"the command runs.{_loaded_note(r)}", "",
              "| codec | executor | wall | weights/s | vs 1 worker | driver CPU | workers CPU | peak RSS (tree) | load avg (1 min, before-after) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in rows:
        base = _row(rows, _codec(t), "1 worker")["weights_per_s"]
        cpu = (f"{t['driver_cpu_s']:.1f} s | {t['workers_cpu_s']:.1f} s" if "driver_cpu_s" in t
               else "not measured | not measured")
        lines.append(f"| {_codec(t)} | {t['executor']} | {t['wall_s']:.0f} s | {t['weights_per_s'] / 1e6:.2f} M | "
                     f"{t['weights_per_s'] / base:.2f}x | {cpu} | {t['peak_tree_rss_bytes'] / gb:.2f} GB | "
                     f"{_load(t)} |")
    lines += ["", "Against the targets (2 workers at least 1.8x 1 worker; Ray on this machine within 15% of the "
              "pool's time), per codec:", ""]
    for codec in dict.fromkeys(_codec(t) for t in rows):
        if any(_row(rows, codec, k) is None for k in ("1 worker", "2 worker", "Ray")):
            lines.append(f"- {codec}: not every executor's row was measured.")
            continue
        one, two, ray = (_row(rows, codec, k) for k in ("1 worker", "2 worker", "Ray"))
        speedup, behind = one["wall_s"] / two["wall_s"], ray["wall_s"] / two["wall_s"] - 1
        running = _row(rows, codec, RAY_RUNNING)
        fixed = (f"; the driver's CPU with 2 workers is {two['driver_cpu_s']:.1f} s, "
                 f"{two['driver_cpu_s'] / (two['driver_cpu_s'] + two['workers_cpu_s']):.0%} of the run's CPU "
                 f"(read as serial, with the workers' CPU split over 2 cores and nothing overlapping: "
                 f"{one['driver_cpu_s'] / (two['driver_cpu_s'] + two['workers_cpu_s'] / 2):.2f}x), "
                 f"and Ray's processes use {ray['workers_cpu_s'] - two['workers_cpu_s']:+.1f} s of CPU against the pool's workers"
                 if "driver_cpu_s" in two and "driver_cpu_s" in ray else "")
        loaded = max(x for t in (one, two, ray) for x in (t.get("load_average_before", t["load_average"])[0],
                                                          t["load_average"][0])) > r["cpus"]
        verdict = ((lambda ok: "not a verdict: loaded machine") if loaded else (lambda ok: "met" if ok else "missed"))
        joined = ("" if running is None else
                  f"; Ray already running {running['wall_s'] / two['wall_s'] - 1:+.0%} against the pool "
                  f"({verdict(running['wall_s'] / two['wall_s'] - 1 <= 0.15)})")
        lines.append(f"- {codec}: 2 workers {speedup:.2f}x 1 worker ({verdict(speedup >= 1.8)}); "
                     f"Ray started by the command {behind:+.0%} against the pool ({verdict(behind <= 0.15)})"
                     f"{joined}{fixed}.")
    res = r["resume"]
    trials = res["trials"]
    killed = [t for t in trials if t["killed"]]
    lines += ["", f"## Resume ({res['n_parameters'] / 1e6:.0f} M parameters, {res['n_units']} units, "
              f"uninterrupted run {res['clean_s']:.0f} s)", "",
              f"{len(trials)} trials: the command killed (SIGKILL) as soon as a random number of units (1 to "
              f"{res['n_units'] - 1}) was on disk, then run again. Killed before finishing: {len(killed)}; artifact "
              f"byte-identical to the uninterrupted run's: {sum(t['same_bytes'] for t in trials)} of {len(trials)}.", "",
              "| trial | units on disk when killed | killed | rerun wall | same bytes |", "|---:|---:|---|---:|---|"]
    for t in trials:
        lines.append(f"| {t['trial']} | {t['units_on_disk']} | {t['killed']} | {t['rerun_s']:.1f} s | {t['same_bytes']} |")
    lines += ["", "## Estimated wall time for larger models (an estimate, not a measurement)", "",
              "Extrapolated linearly from the measured end-to-end rates of the uniform rows above (the work per weight is the same; "
              "start-up is a few seconds). N cores: the 1-worker rate times N times the 2-worker scaling "
              "efficiency measured here; a Ray cluster of N nodes of C cores: the same per core, reading from "
              "shared storage at least as fast. These leave out the driver's serial parts: the assembly of the artifact, which writes it once "
              "(minutes for a 70 B model at disk speed), and the plan's reading of kept tensors stored in a wider "
              "dtype than the raw one (bfloat16 embeddings kept as float16), so the many-core figures are lower bounds. "
              f"No GPU was available to measure.{_loaded_note(r)}", "",
              "| model | 1 worker | 2 workers (measured rate) | 16 cores (est.) | Ray, 8 nodes x 16 cores (est.) |",
              "|---|---:|---:|---:|---:|"]
    rate1, rate2 = (_row(rows, "uniform", k)["weights_per_s"] for k in ("1 worker", "2 worker"))
    eff = rate2 / (2 * rate1)
    for label, n in (("8 B", 8e9), ("70 B", 70e9), ("405 B", 405e9)):
        lines.append(f"| {label} | {_h(n / rate1)} | {_h(n / rate2)} | {_h(n / (rate1 * 16 * eff))} | "
                     f"{_h(n / (rate1 * 128 * eff))} |")
    return "\n".join(lines) + "\n"


def _codec(row: dict) -> str:
    """A throughput row's codec (rows measured before there were several: uniform)."""
    return row.get("codec", "uniform")


def _row(rows: list[dict], codec: str, executor: str) -> dict | None:
    """The throughput row of `codec` whose executor's label starts with `executor` (None: not measured)."""
    return next((t for t in rows if _codec(t) == codec and t["executor"].startswith(executor)), None)


def _loaded_note(r: dict) -> str:
    """A warning, where the throughput rows ran with more runnable jobs than cores: their wall
    times (and the rates and estimates made from them) are upper bounds that say nothing about
    speed-up; their CPU seconds still do (inflated somewhat by the contention)."""
    loads = [x for t in r["throughput"] for x in (t.get("load_average_before", t["load_average"])[0], t["load_average"][0])]
    if max(loads) <= r["cpus"]:
        return ""
    return (f" **Measured on a loaded machine (1-minute load average up to {max(loads):.1f} on {r['cpus']} cores): "
            "the wall times, rates and anything derived from them are upper bounds and say nothing about "
            "speed-up; compare the CPU seconds.**")


def _load(row: dict) -> str:
    """The 1-minute load average around a row: before-after where both were recorded."""
    before = row.get("load_average_before")
    return f"{before[0]:.1f}-{row['load_average'][0]:.1f}" if before else f"{row['load_average'][0]:.1f}"


def _h(seconds: float) -> str:
    """A duration for the estimate table: hours, minutes, or seconds where minutes would round to 0."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


if __name__ == "__main__":
    main()
