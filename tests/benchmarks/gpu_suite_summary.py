"""Bookkeeping of tests/benchmarks/gpu_suite.sh: one record per part, then summary.json + summary.md.

    python gpu_suite_summary.py record --out DIR --part NAME --rc RC --seconds S --budget B --command CMD \
        [--json PART.json] [--output PART.out] [--note TEXT]
    python gpu_suite_summary.py facts --out DIR            # python / torch / GPU facts as a record
    python gpu_suite_summary.py summarise --out DIR --parts teacher,encodings,...

Standard library only (at `summarise` time on the GPU box nothing else is guaranteed to import).
Every record is appended to DIR/results.jsonl as soon as its part ends, so a run cut short still
leaves the figures of the parts that finished. A part's figures are the numeric leaves of the JSON
its script wrote (`--json`), flattened to dotted paths; list items are named by their clip_batch /
tiling / variant key when they have one. Only when a script wrote no JSON (bench_tracker.py before
it gained --json) are figures parsed from its printed lines.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

RESULTS, SUMMARY_JSON, SUMMARY_MD = "results.jsonl", "summary.json", "summary.md"
LABEL_KEYS = ("clip_batch", "batch", "tiling", "variant", "name", "mode", "side")

# bench_tracker.py's printed lines (today's format) -> figures, for when it wrote no JSON.
TRACKER_LINES = [
    (re.compile(r"seconds/clip: ours ([\d.]+).*\| stock ([\d.]+)"), ("ours.s_per_clip", "stock.s_per_clip")),
    (re.compile(r"clips/hour: ours ([\d,.]+) \| stock ([\d,.]+)"), ("ours.clips_per_hour", "stock.clips_per_hour")),
    (re.compile(r"speed-up stock/ours: ([\d.]+)x \(without JPEG writing ([\d.]+)x\)"),
     ("speedup_stock_over_ours", "speedup_without_jpeg")),
    (re.compile(r"peak GPU memory GiB: ours ([\d.]+) \| stock ([\d.]+)"), ("ours.peak_gib", "stock.peak_gib")),
]


def flatten(value, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON value as {dotted.path: number}; lists of plain numbers (per-step times) are skipped."""
    out: dict[str, float] = {}
    if isinstance(value, bool):
        return out
    if isinstance(value, (int, float)):
        if not (isinstance(value, float) and math.isnan(value)):
            out[prefix] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            label = str(i)
            if isinstance(item, dict):
                key = next((k for k in LABEL_KEYS if k in item), None)
                if key is not None:
                    label = f"{key}={item[key]}"
            out.update(flatten(item, f"{prefix}[{label}]"))
    return out


def parse_tracker_output(text: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    for pattern, names in TRACKER_LINES:
        for m in pattern.finditer(text):
            for name, raw in zip(names, m.groups()):
                figures[name] = float(raw.replace(",", ""))
    return figures


def last_error(text: str) -> str:
    """The most telling line of a failed part's output: its last exception / error line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(Error|Exception|error:|Killed|out of memory)", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


def status_of(rec: dict) -> tuple[str, str]:
    """(status, reason): ok, skipped (the script said why), timeout, failed; fsdp failures read "not available"."""
    data, rc = rec.get("json"), rec["rc"]
    if rc == 0 and isinstance(data, dict) and data.get("skipped"):
        return "skipped", str(data["skipped"])
    if rc == 0 and rec["figures"]:
        return "ok", rec.get("note", "")
    if rc in (124, 137):
        reason = f"timed out after {rec['budget']} s"
    elif rc == 0:
        reason = "finished but wrote no figures"
    else:
        reason = f"exit {rc}: {rec.get('error', '')}"
    if rec["part"] == "fsdp":
        return "not available", reason
    return ("timeout" if rc in (124, 137) else "failed"), reason


def record(args: argparse.Namespace) -> None:
    out = Path(args.out)
    text = Path(args.output).read_text(errors="replace") if args.output and Path(args.output).exists() else ""
    data = None
    if args.json and Path(args.json).exists():
        try:
            data = json.loads(Path(args.json).read_text())
        except json.JSONDecodeError as e:
            data = {"unreadable_json": str(e)}
    figures = flatten(data) if isinstance(data, dict) else {}
    note = args.note or ""
    if not figures and args.part == "teacher" and text:
        figures = parse_tracker_output(text)
        if figures:
            note = (note + "; " if note else "") + "figures parsed from bench_tracker's printed lines (no JSON)"
    rec = {"part": args.part, "rc": args.rc, "seconds": round(args.seconds, 1), "budget": args.budget,
           "command": args.command, "json": data, "figures": figures, "note": note,
           "error": last_error(text) if args.rc != 0 else "", "output_tail": text.splitlines()[-15:]}  # fmt: skip
    rec["status"], rec["reason"] = status_of(rec)
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"[gpu_suite] part {args.part}: {rec['status']} in {rec['seconds']} s"
          + (f" ({rec['reason']})" if rec["reason"] else "") + f", {len(figures)} figures")


def facts(args: argparse.Namespace) -> None:
    """Python, torch, CUDA and GPU facts of this machine (torch imported here only, never required)."""
    import platform
    import subprocess

    info: dict = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                        gpu_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}")
    except Exception as e:  # the facts must not stop the suite
        info["torch_error"] = repr(e)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"unavailable ({e.__class__.__name__})"
    for name in ("xformers", "diffusers", "sam2", "zarr", "webdataset", "hydra", "av"):
        try:
            __import__(name)
            info[f"import_{name}"] = "ok"
        except Exception as e:
            info[f"import_{name}"] = f"{e.__class__.__name__}: {e}"[:120]
    with open(Path(args.out) / RESULTS, "a") as f:
        f.write(json.dumps({"part": "facts", **info}) + "\n")
    for k, v in info.items():
        print(f"[gpu_suite] {k}: {v}")


def fmt(v: float) -> str:
    if isinstance(v, int):
        return f"{v:,d}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def summarise(args: argparse.Namespace) -> None:
    out = Path(args.out)
    recs, facts_rec = {}, {}
    path = out / RESULTS
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        if rec["part"] == "facts":
            facts_rec = rec
        else:
            recs[rec["part"]] = rec  # a rerun part replaces its earlier record
    parts = [p for p in args.parts.split(",") if p]
    summary = {"mode": args.mode, "facts": facts_rec, "parts": {}}
    for part in parts:
        rec = recs.get(part)
        if rec is None:
            summary["parts"][part] = {"status": "not run", "reason": "the suite ended before this part", "figures": {}}
            continue
        summary["parts"][part] = {k: rec[k] for k in ("status", "reason", "rc", "seconds", "budget", "command", "figures", "note")}
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=1))

    lines = [f"# gpu_suite summary ({args.mode})", ""]
    gpu = facts_rec.get("gpu") or "no GPU"
    lines.append(f"Machine: {gpu}; python {facts_rec.get('python')}, torch {facts_rec.get('torch')} "
                 f"(CUDA {facts_rec.get('cuda')}); nvidia-smi: {facts_rec.get('nvidia_smi', '-')}")
    lines += ["", "| part | figure | value | command |", "|---|---|---|---|"]
    for part, s in summary["parts"].items():
        cmd = f"`{s.get('command', '')}`" if s.get("command") else ""
        lines.append(f"| {part} | status | {s['status']} ({s.get('seconds', '-')} s){': ' + s['reason'] if s['reason'] else ''} | {cmd} |")
        for name, value in s["figures"].items():
            lines.append(f"| {part} | {name} | {fmt(value)} | |")
    (out / SUMMARY_MD).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--part", required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--seconds", type=float, required=True)
    r.add_argument("--budget", type=int, required=True)
    r.add_argument("--command", required=True)
    r.add_argument("--json", default=None)
    r.add_argument("--output", default=None)
    r.add_argument("--note", default=None)
    f = sub.add_parser("facts")
    f.add_argument("--out", required=True)
    s = sub.add_parser("summarise")
    s.add_argument("--out", required=True)
    s.add_argument("--parts", required=True)
    s.add_argument("--mode", default="gpu")
    args = ap.parse_args()
    {"record": record, "facts": facts, "summarise": summarise}[args.cmd](args)


if __name__ == "__main__":
    main()
