"""Run every benchmark of the project and write one report (Markdown + JSON).

    python scripts/run_benchmarks.py [--out benchmarks_out] [--only tokenizer sane ...]

Each scripts/bench_<topic>.py compares against a baseline in the same run and prints its own table;
this runner calls them one after the other (never in parallel: they would share the cores), records
the machine, and collects their printed tables and JSON results into OUT/benchmarks.md and
OUT/benchmarks.json. Paste the Markdown into BENCHMARKS.md together with the machine line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOPICS = ("tokenizer", "weightspace", "population", "sane", "training", "finetune", "pipelines")
# Opt-in (--only memory): bench_memory writes 7 GB of synthetic ResNet-18 zoos and trains on them,
# minutes of disk and CPU that would break the 5-minute budget of a full run.
OPT_IN = ("memory",)


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def cpu_flags() -> str:
    """The vector units that decide CPU speed here, as the CPU reports them and as torch may use them
    (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA can hold torch below what the CPU has)."""
    import torch

    from hyperrep_hf.precision import cpu_has_native_bf16

    try:
        flags = set(" ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    except OSError:
        flags = set()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    limits = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ]
    return (f"{' '.join(shown) or 'no AVX2'}; torch uses {torch.backends.cpu.get_cpu_capability()}"
            f"{' (' + ', '.join(limits) + ')' if limits else ''}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}")


def run_one(topic: str) -> dict:
    script = HERE / f"bench_{topic}.py"
    if not script.exists():
        return {"topic": topic, "status": f"missing: {script.name}"}
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), "--json", str(out_json)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        result = {"topic": topic, "command": f"python scripts/{script.name}",
                  "seconds": round(time.perf_counter() - t0, 1), "status": "ok" if proc.returncode == 0 else f"failed ({proc.returncode})",
                  "stdout": proc.stdout}
        if proc.returncode != 0:
            result["stderr"] = proc.stderr[-3000:]
        if out_json.exists():
            result["result"] = json.loads(out_json.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks_out")
    p.add_argument("--only", nargs="*", choices=TOPICS + OPT_IN, default=list(TOPICS))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    results = []
    start = time.perf_counter()
    for topic in args.only:
        print(f"== bench_{topic} ...", flush=True)
        results.append(run_one(topic))
        print(results[-1]["stdout"] or results[-1].get("stderr", results[-1]["status"]), flush=True)
    info["seconds"] = round(time.perf_counter() - start, 1)
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores ({info['cpu_flags']}), GPU {info['gpu']}, torch {info['torch']}, "
             f"Python {info['python']}, {info['date']}; all benchmarks took {info['seconds']} s", ""]
    for r in results:
        lines += [f"### {r['topic']}  ({r['status']}, {r.get('seconds', 0)} s)", "", f"`{r.get('command', '')}`", "", "```",
                  (r.get("stdout") or r.get("stderr") or "").rstrip(), "```", ""]
    (out / "benchmarks.md").write_text("\n".join(lines))
    (out / "benchmarks.json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    print(f"all benchmarks: {info['seconds']} s; wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
