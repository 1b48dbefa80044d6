#!/usr/bin/env python3
"""Run the envbox lifecycle benchmark and the same workload with agentdocker-lite, side by side.

    benches/compare_agentdocker_lite.py --rootfs DIR --workers N --iterations M --envbox PATH
    benches/compare_agentdocker_lite.py --skip-envbox ...       # agentdocker-lite half only
    benches/compare_agentdocker_lite.py --json ...              # one JSON object on stdout

The envbox half runs `ENVBOX bench --image DIR --workers N --iterations M --json` and parses its
JSON. The agentdocker-lite half (PyPI package `agentdocker-lite`, pinned by --adl-version) runs in
this script, on the same rootfs directory, in the same run:

  lifecycle  N worker processes, released together by a barrier, each M iterations of:
               create (timed) -> run('true') x --exec-per-iteration (each timed)
               -> write --files-per-reset files (untimed) -> reset (timed)
               -> check the files are gone (untimed) -> delete (timed)
  reset_10k  one sandbox, --reset10k-iterations times: create 10,000 files (untimed) -> reset (timed)
  throughput --throughput-workers (16) processes, released together by a barrier:
               commands/s:   each runs `true` --commands-per-worker times in its sandbox
               lifecycles/s: each does --lifecycles-per-worker x (create, run('true'), delete)

Needs root (agentdocker-lite's rootful backend mounts overlayfs; envbox needs root too) and a
rootfs with bash (agentdocker-lite runs every command as `bash -c`): use the Debian test rootfs
from rootfs-tools/scripts/build-test-rootfs.sh. If agentdocker_lite is not importable, the script
creates a venv (--venv), pip-installs agentdocker-lite there and re-executes itself with it.

Every loop is bounded in count, every phase in time (--timeout); on a timeout or an interrupt the
script terminates only the worker processes it started, then unmounts and kills what is left
under its own private state directory.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADL_DEFAULT_VERSION = "0.0.3"
DEFAULT_VENV = "/var/cache/envbox-bench/adl-venv"
REPO_ROOT = Path(__file__).resolve().parent.parent
OPS = ("create", "exec", "reset", "reset_10k", "delete")


def log(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# statistics


def percentile(sorted_vals: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def summarize(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    if not s:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    return {
        "n": len(s),
        "p50_ms": round(percentile(s, 50), 3),
        "p95_ms": round(percentile(s, 95), 3),
        "max_ms": round(s[-1], 3),
    }


# --------------------------------------------------------------------------------------------
# agentdocker-lite bootstrap (venv)


def ensure_adl_importable(args: argparse.Namespace) -> None:
    """Import agentdocker_lite, or build a venv with it and re-exec this script inside it."""
    try:
        import agentdocker_lite  # noqa: F401
        from importlib.metadata import version

        have = version("agentdocker-lite")
        if have != args.adl_version:
            log(f"warning: agentdocker-lite {have} is installed, {args.adl_version} was asked for")
        return
    except ImportError:
        pass
    venv = Path(args.venv)
    vpy = venv / "bin" / "python"
    env = dict(os.environ, ENVBOX_COMPARE_REEXEC="1")
    argv = [str(vpy), str(Path(__file__).resolve()), *sys.argv[1:]]
    if vpy.exists():
        probe = subprocess.run(
            [str(vpy), "-c", "import agentdocker_lite, importlib.metadata as m;"
             "print(m.version('agentdocker-lite'))"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == args.adl_version:
            os.execve(str(vpy), argv, env)
    if os.environ.get("ENVBOX_COMPARE_REEXEC") == "1":
        sys.exit(f"compare: agentdocker_lite still not importable from {sys.executable}")
    if not vpy.exists():
        log(f"creating venv {venv}")
        base_py = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        r = subprocess.run([base_py, "-m", "venv", str(venv)])
        if r.returncode != 0:
            sys.exit("compare: `python3 -m venv` failed (on Debian: apt-get install python3-venv)")
    log(f"installing agentdocker-lite=={args.adl_version} into {venv}")
    r = subprocess.run(
        [str(vpy), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"agentdocker-lite=={args.adl_version}"]
    )
    if r.returncode != 0:
        sys.exit("compare: pip install agentdocker-lite failed")
    os.execve(str(vpy), argv, env)


# --------------------------------------------------------------------------------------------
# agentdocker-lite workers (top-level functions: they run in spawned processes)


class _Terminated(Exception):
    pass


def _on_sigterm(_signo, _frame):
    raise _Terminated()


def _adl_config(rootfs: str, base_dir: str, net_isolate: bool):
    from agentdocker_lite import SandboxConfig

    return SandboxConfig(image=rootfs, env_base_dir=base_dir, net_isolate=net_isolate)


def _run_ok(sb, cmd: str) -> None:
    out, code = sb.run(cmd)
    if code != 0:
        raise RuntimeError(f"command {cmd!r} exited {code}: {out[-500:]!r}")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _worker_main(kind: str, idx: int, params: dict, barrier, results) -> None:
    """One worker process. Puts exactly one dict on `results`."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from agentdocker_lite import Sandbox

    cfg = _adl_config(params["rootfs"], params["base_dir"], params["net_isolate"])
    res: dict = {"idx": idx, "kind": kind, "samples": {}, "error": None}
    samples: dict[str, list[float]] = res["samples"]
    live: list = []

    def create(name: str):
        t0 = time.perf_counter()
        sb = Sandbox(cfg, name=name)
        dt = _ms(t0)
        live.append(sb)
        return sb, dt

    def delete(sb) -> float:
        t0 = time.perf_counter()
        sb.delete()
        dt = _ms(t0)
        live.remove(sb)
        return dt

    try:
        if kind == "lifecycle":
            # start together, after every worker has imported agentdocker_lite
            barrier.wait(timeout=params["barrier_timeout"])
            nfiles = params["files_per_reset"]
            write = (f"mkdir -p /tmp/bench && for i in $(seq {nfiles}); do "
                     f"echo $i > /tmp/bench/f$i; done")
            for it in range(params["iterations"]):
                sb, dt = create(f"l{idx}-{it}")
                samples.setdefault("create", []).append(dt)
                for _ in range(params["exec_per_iteration"]):
                    t0 = time.perf_counter()
                    out, code = sb.run("true")
                    dt = _ms(t0)
                    if code != 0:
                        raise RuntimeError(f"run('true') exited {code}: {out!r}")
                    samples.setdefault("exec", []).append(dt)
                _run_ok(sb, write)
                t0 = time.perf_counter()
                sb.reset()
                samples.setdefault("reset", []).append(_ms(t0))
                _run_ok(sb, "test ! -e /tmp/bench")
                samples.setdefault("delete", []).append(delete(sb))

        elif kind == "reset_10k":
            sb, _ = create(f"r10k-{idx}")
            # 10,000 new files in the upper layer (one process, no per-file fork)
            fill = "mkdir -p /tmp/r10k && cd /tmp/r10k && seq 1 10000 | xargs touch && ls | wc -l"
            for _ in range(params["iterations"]):
                out, code = sb.run(fill)
                if code != 0 or out.strip() != "10000":
                    raise RuntimeError(f"creating 10,000 files failed ({code}): {out[-300:]!r}")
                t0 = time.perf_counter()
                sb.reset()
                samples.setdefault("reset_10k", []).append(_ms(t0))
                _run_ok(sb, "test ! -e /tmp/r10k")
            delete(sb)

        elif kind == "commands":
            sb, _ = create(f"c{idx}")
            _run_ok(sb, "true")  # warm
            barrier.wait(timeout=params["barrier_timeout"])
            start = time.monotonic()
            for _ in range(params["count"]):
                out, code = sb.run("true")
                if code != 0:
                    raise RuntimeError(f"run('true') exited {code}: {out!r}")
            res["window"] = (start, time.monotonic())
            res["count"] = params["count"]
            delete(sb)

        elif kind == "lifecycles":
            barrier.wait(timeout=params["barrier_timeout"])
            start = time.monotonic()
            for it in range(params["count"]):
                sb, _ = create(f"f{idx}-{it}")
                _run_ok(sb, "true")
                delete(sb)
            res["window"] = (start, time.monotonic())
            res["count"] = params["count"]
        else:
            raise ValueError(kind)
    except _Terminated:
        res["error"] = "terminated"
    except BaseException as e:  # report everything to the parent, never hang it
        res["error"] = f"{type(e).__name__}: {e}"
        if barrier is not None:
            try:
                barrier.abort()
            except Exception:
                pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for sb in list(live):
            try:
                sb.delete()
            except Exception:
                pass
        results.put(res)


# --------------------------------------------------------------------------------------------
# agentdocker-lite driver


def _mounts_below(path: str) -> list[str]:
    path = os.path.realpath(path)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == path or mnt.startswith(path + "/"):
                out.append(mnt)
    return sorted(out, key=len, reverse=True)


def _procs_started_under(base_dir: str) -> list[int]:
    """PIDs whose command line names our private (mkdtemp) base dir -- the `unshare` that
    agentdocker-lite starts for each sandbox shell -- plus all their descendants."""
    me = os.getpid()
    parent: dict[int, int] = {}
    seeds: set[int] = set()
    needle = base_dir.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            parent[pid] = ppid
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read():
                    seeds.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    found: set[int] = set()
    for pid in parent:
        p, hops = pid, 0
        while p > 1 and hops < 64:
            if p in seeds:
                found.add(pid)
                break
            p = parent.get(p, 0)
            hops += 1
    found.discard(me)
    return sorted(found)


def sweep(base_dir: str) -> None:
    """Kill sandbox processes our workers started that are still alive and unmount what is left
    under base_dir. (The workers themselves are terminated and joined by run_phase.)"""
    for pid in _procs_started_under(base_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for mnt in _mounts_below(base_dir):
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def run_phase(kind: str, nworkers: int, params: dict, timeout: float, base_dir: str,
              use_barrier: bool = False) -> list[dict]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(nworkers) if use_barrier else None
    procs = [
        ctx.Process(target=_worker_main, args=(kind, i, params, barrier, results), daemon=False)
        for i in range(nworkers)
    ]
    deadline = time.monotonic() + timeout
    out: list[dict] = []
    try:
        for p in procs:
            p.start()
        while len(out) < nworkers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"phase {kind} exceeded {timeout:.0f} s")
            try:
                out.append(results.get(timeout=min(remaining, 1.0)))
            except Exception:  # queue.Empty
                if all(not p.is_alive() for p in procs) and results.empty():
                    raise RuntimeError(f"phase {kind}: a worker died without reporting")
    finally:
        if len(out) == nworkers:  # all reported: they are exiting on their own
            for p in procs:
                p.join(timeout=10)
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.terminate()  # SIGTERM: the worker deletes its sandboxes
        for p in alive:
            p.join(timeout=10)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        sweep(base_dir)
    errors = [r["error"] for r in out if r.get("error")]
    if errors:
        raise RuntimeError(f"phase {kind}: {len(errors)} worker(s) failed, first: {errors[0]}")
    return out


def run_adl(args: argparse.Namespace) -> dict:
    ensure_adl_importable(args)
    from importlib.metadata import version

    adl_version = version("agentdocker-lite")
    if os.geteuid() != 0:
        raise SystemExit("compare: run as root (agentdocker-lite's rootful backend mounts overlayfs)")
    rootfs = os.path.realpath(args.rootfs)
    if not Path(rootfs, "bin", "bash").exists() and not Path(rootfs, "usr", "bin", "bash").exists():
        raise SystemExit(f"compare: {rootfs} has no bash; agentdocker-lite runs commands with "
                         "`bash -c`: use the Debian test rootfs")

    base_dir = tempfile.mkdtemp(prefix="envbox-adl-bench-", dir=args.state_dir)
    common = {"rootfs": rootfs, "base_dir": base_dir, "net_isolate": args.adl_net_isolate,
              "barrier_timeout": args.timeout}
    samples: dict[str, list[float]] = {op: [] for op in OPS}
    throughput: dict = {"workers": args.throughput_workers}
    t_all = time.monotonic()
    try:
        log(f"agentdocker-lite {adl_version}: lifecycle, {args.workers} workers x "
            f"{args.iterations} iterations")
        for r in run_phase("lifecycle", args.workers,
                           dict(common, iterations=args.iterations,
                                exec_per_iteration=args.exec_per_iteration,
                                files_per_reset=args.files_per_reset),
                           args.timeout, base_dir, use_barrier=True):
            for op, vals in r["samples"].items():
                samples[op].extend(vals)

        if args.reset10k_iterations > 0:
            log(f"agentdocker-lite: reset after 10,000 files x {args.reset10k_iterations}")
            for r in run_phase("reset_10k", 1, dict(common, iterations=args.reset10k_iterations),
                               args.timeout, base_dir):
                samples["reset_10k"].extend(r["samples"].get("reset_10k", []))

        tw = args.throughput_workers
        if args.commands_per_worker > 0:
            log(f"agentdocker-lite: commands/s, {tw} workers x {args.commands_per_worker} `true`")
            rs = run_phase("commands", tw, dict(common, count=args.commands_per_worker),
                           args.timeout, base_dir, use_barrier=True)
            wall = max(r["window"][1] for r in rs) - min(r["window"][0] for r in rs)
            total = sum(r["count"] for r in rs)
            throughput["commands"] = total
            throughput["commands_wall_s"] = round(wall, 3)
            throughput["commands_per_s"] = round(total / wall, 1) if wall > 0 else None

        if args.lifecycles_per_worker > 0:
            log(f"agentdocker-lite: lifecycles/s, {tw} workers x {args.lifecycles_per_worker} "
                "(create, run('true'), delete)")
            rs = run_phase("lifecycles", tw, dict(common, count=args.lifecycles_per_worker),
                           args.timeout, base_dir, use_barrier=True)
            wall = max(r["window"][1] for r in rs) - min(r["window"][0] for r in rs)
            total = sum(r["count"] for r in rs)
            throughput["lifecycles"] = total
            throughput["lifecycles_wall_s"] = round(wall, 3)
            throughput["lifecycles_per_s"] = round(total / wall, 1) if wall > 0 else None
    finally:
        sweep(base_dir)
        shutil.rmtree(base_dir, ignore_errors=True)

    return {
        "tool": "agentdocker-lite",
        "version": adl_version,
        "workers": args.workers,
        "iterations": args.iterations,
        "image": rootfs,
        "config": {"net_isolate": args.adl_net_isolate, "exec_per_iteration":
                   args.exec_per_iteration, "files_per_reset": args.files_per_reset,
                   "reset10k_iterations": args.reset10k_iterations,
                   "commands_per_worker": args.commands_per_worker,
                   "lifecycles_per_worker": args.lifecycles_per_worker},
        "ops": {op: summarize(v) for op, v in samples.items()},
        "throughput": throughput,
        "elapsed_s": round(time.monotonic() - t_all, 1),
    }


# --------------------------------------------------------------------------------------------
# envbox half


def find_envbox(arg: str | None) -> str:
    if arg:
        p = Path(arg)
        if p.is_file() and os.access(p, os.X_OK):
            return str(p.resolve())
        w = shutil.which(arg) if "/" not in arg else None
        if w:
            return w
        raise SystemExit(f"compare: envbox binary not found or not executable: {arg}\n"
                         "  build it with `cargo build --release` (target/release/envbox), "
                         "pass --envbox PATH, or use --skip-envbox")
    for cand in (REPO_ROOT / "target" / "release" / "envbox",
                 Path(os.environ.get("CARGO_TARGET_DIR", "/nonexistent")) / "release" / "envbox"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    w = shutil.which("envbox")
    if w:
        return w
    raise SystemExit("compare: no envbox binary: build it with `cargo build --release` "
                     "(target/release/envbox), pass --envbox PATH, or use --skip-envbox")


def _parse_json_output(text: str) -> dict:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    # tolerate log lines around the object: take the last line that parses as an object
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError("no JSON object in envbox output")


def run_envbox(args: argparse.Namespace) -> dict:
    exe = find_envbox(args.envbox)
    cmd = [exe, "bench", "--image", os.path.realpath(args.rootfs), "--workers", str(args.workers),
           "--iterations", str(args.iterations), "--json"]
    log("envbox: " + " ".join(cmd))
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"compare: `envbox bench` did not finish within {args.timeout:.0f} s")
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"compare: `envbox bench` exited {p.returncode}")
    try:
        data = _parse_json_output(p.stdout)
    except ValueError as e:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-2000:])
        raise SystemExit(f"compare: could not parse `envbox bench --json` output: {e}")
    if not isinstance(data, dict) or not isinstance(data.get("ops"), dict):
        raise SystemExit("compare: `envbox bench --json` printed no \"ops\" object")
    data.setdefault("tool", "envbox")
    data["binary"] = exe
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    return data


# --------------------------------------------------------------------------------------------
# report


def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d if isinstance(d, (int, float)) else None


def _ratio(num, den):
    if num is None or den is None or den <= 0:
        return None
    return round(num / den, 2)


def compute_ratios(env: dict | None, adl: dict | None) -> dict:
    r: dict = {}
    for op in OPS:
        r[op] = {f"{q}": _ratio(_get(adl, "ops", op, f"{q}_ms"), _get(env, "ops", op, f"{q}_ms"))
                 for q in ("p50", "p95")}
    for k in ("commands_per_s", "lifecycles_per_s"):
        # throughput: envbox / adl, so > 1 means envbox is faster, like the latency ratios
        r[k] = _ratio(_get(env, "throughput", k), _get(adl, "throughput", k))
    return r


def _f(v, unit: str = "") -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.0f}{unit}" if v >= 100 else f"{v:.2f}{unit}"


def print_table(env: dict | None, adl: dict | None, ratios: dict, args) -> None:
    adl_name = f"agentdocker-lite {adl['version']}" if adl else "agentdocker-lite"
    print(f"image: {os.path.realpath(args.rootfs)}   workers: {args.workers}   "
          f"iterations: {args.iterations}")
    h = (f"{'op (ms)':<11} | {'envbox p50':>10} {'p95':>8} {'max':>8} | "
         f"{'adl p50':>9} {'p95':>8} {'max':>8} | {'adl/envbox p50':>14} {'p95':>6}")
    print(f"{'':11} | {'envbox':^28} | {adl_name:^27} |")
    print(h)
    print("-" * len(h))
    for op in OPS:
        print(f"{op:<11} | {_f(_get(env, 'ops', op, 'p50_ms')):>10} "
              f"{_f(_get(env, 'ops', op, 'p95_ms')):>8} {_f(_get(env, 'ops', op, 'max_ms')):>8} | "
              f"{_f(_get(adl, 'ops', op, 'p50_ms')):>9} {_f(_get(adl, 'ops', op, 'p95_ms')):>8} "
              f"{_f(_get(adl, 'ops', op, 'max_ms')):>8} | "
              f"{_f(ratios[op]['p50'], 'x'):>14} {_f(ratios[op]['p95'], 'x'):>6}")
    print("-" * len(h))
    tw_env = _get(env, "throughput", "workers")
    tw = args.throughput_workers
    print(f"{'throughput':<16} | {'envbox':>10} | {'adl':>10} | envbox/adl   "
          f"({tw} workers{'' if tw_env in (None, tw) else f'; envbox used {tw_env}'})")
    for k, label in (("commands_per_s", "commands/s"), ("lifecycles_per_s", "lifecycles/s")):
        print(f"{label:<16} | {_f(_get(env, 'throughput', k)):>10} | "
              f"{_f(_get(adl, 'throughput', k)):>10} | {_f(ratios[k], 'x')}")
    if env is None:
        print("(envbox half skipped)")
    if adl is None:
        print("(agentdocker-lite half skipped)")


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    default_rootfs = os.path.join(
        os.environ.get("ENVBOX_TEST_ROOTFS_DIR", "/var/cache/envbox-test-rootfs"), "debian")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rootfs", default=default_rootfs,
                    help="rootfs directory used by both (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=32, help="concurrent workers (default 32)")
    ap.add_argument("--iterations", type=int, default=10, help="lifecycles per worker (default 10)")
    ap.add_argument("--envbox", help="envbox binary (default: target/release/envbox, then PATH)")
    ap.add_argument("--skip-envbox", action="store_true", help="run the agentdocker-lite half only")
    ap.add_argument("--skip-adl", action="store_true", help="run the envbox half only")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--exec-per-iteration", type=int, default=5,
                    help="timed run('true') per lifecycle iteration (default 5)")
    ap.add_argument("--files-per-reset", type=int, default=10,
                    help="files written before each timed reset (default 10)")
    ap.add_argument("--reset10k-iterations", type=int, default=3,
                    help="resets after creating 10,000 files (default 3; 0 skips)")
    ap.add_argument("--throughput-workers", type=int, default=16, help="(default 16)")
    ap.add_argument("--commands-per-worker", type=int, default=100,
                    help="`true` commands per worker for commands/s (default 100; 0 skips)")
    ap.add_argument("--lifecycles-per-worker", type=int, default=5,
                    help="create/run/delete per worker for lifecycles/s (default 5; 0 skips)")
    ap.add_argument("--adl-net-isolate", action="store_true",
                    help="give agentdocker-lite sandboxes a network namespace like envbox's "
                         "default `--net none` (agentdocker-lite's default shares the host's)")
    ap.add_argument("--adl-version", default=ADL_DEFAULT_VERSION,
                    help="agentdocker-lite version for the venv (default %(default)s)")
    ap.add_argument("--venv", default=os.environ.get("ENVBOX_ADL_VENV", DEFAULT_VENV),
                    help="venv for agentdocker-lite when it is not importable (default %(default)s)")
    ap.add_argument("--state-dir", default="/tmp",
                    help="where agentdocker-lite's per-run state dir is made (default /tmp)")
    ap.add_argument("--timeout", type=float, default=900,
                    help="limit in seconds for each phase and for `envbox bench` (default 900)")
    args = ap.parse_args(argv)
    for name in ("workers", "iterations", "throughput_workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.skip_envbox and args.skip_adl:
        ap.error("--skip-envbox and --skip-adl together leave nothing to run")
    if not Path(args.rootfs).is_dir():
        ap.error(f"--rootfs {args.rootfs} is not a directory "
                 "(build it: rootfs-tools/scripts/build-test-rootfs.sh debian)")
    return args


def _parent_sigterm(_signo, _frame):
    raise KeyboardInterrupt  # unwinds through run_phase's cleanup


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _parent_sigterm)
    args = parse_args(argv)
    if not args.skip_adl:
        ensure_adl_importable(args)  # may re-exec inside the venv before anything runs
    env = None if args.skip_envbox else run_envbox(args)
    adl = None if args.skip_adl else run_adl(args)
    ratios = compute_ratios(env, adl)
    if args.json:
        json.dump({"image": os.path.realpath(args.rootfs), "workers": args.workers,
                   "iterations": args.iterations, "envbox": env, "agentdocker_lite": adl,
                   "ratios": ratios,
                   "ratio_note": "ops: adl/envbox latency; throughput: envbox/adl "
                                 "(> 1 means envbox is faster)"},
                  sys.stdout, indent=2)
        print()
    else:
        print_table(env, adl, ratios, args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except (TimeoutError, RuntimeError) as e:
        sys.exit(f"compare: error: {e}")
