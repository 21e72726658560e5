"""The `export` command: an artifact into the formats inference engines read (big2small.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from big2small.cli import render

FALLBACK_HELP = ("gguf: the GGUF type for tensors with no exact counterpart (f32, f16, bf16, q8_0, q5_1, q5_0, "
                 "q4_1, q4_0); they are decoded and re-quantised, and the cost is reported. Default: refuse them.")


def export(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    output: Path = typer.Argument(..., help="The file (gguf) or directory (compressed-tensors, hf) to write."),
    to: str = typer.Option(..., "--to", help="gguf (llama.cpp, Ollama), compressed-tensors (vLLM, transformers) or hf (dense, AutoModel*.from_pretrained)."),
    fallback_type: Optional[str] = typer.Option(None, "--fallback-type", help=FALLBACK_HELP),
    tokenizer_from: Optional[Path] = typer.Option(None, "--tokenizer-from", help="gguf: a GGUF file whose tokenizer to copy (default: the model's own, when it came from a GGUF file)."),
    dtype: str = typer.Option("float16", help="hf, compressed-tensors: dtype of dense tensors and scales (float16, bfloat16, float32)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output (a file, or an exported directory)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report (every tensor, its type, SQNR of re-quantised ones) as JSON ('-' = stdout)."),
) -> None:
    """Export an artifact for an inference engine: GGUF, compressed-tensors or a dense HF directory."""
    import big2small as b2s

    out = render.Output(json_out)
    report = b2s.export(artifact, to, output, fallback_type=fallback_type, tokenizer_from=tokenizer_from,
                        dtype=dtype, overwrite=overwrite)
    for line in report.describe():
        out.console.print(line, markup=False, highlight=False, soft_wrap=True)
    out.json(report.to_dict())
