"""What watching the screen costs: a static screen and a changing one, side by side.

Runs the daemon's own pieces in this process (the real Scheduler on the real model, the same ScreenWatcher,
exclusions and frame job the daemon uses) on an Xvfb screen with a Tk window, at 1 frame per second:

  * static:   nothing moves for the whole run;
  * changing: the window changes colour and text every second.

For each it prints frames grabbed, frames sent to the model, the watcher's CPU seconds per minute OUTSIDE
the model (time.thread_time of the watcher thread: grab, fingerprint, window list, exclusion, conversion),
the whole process's CPU per minute (model included), the X server's CPU per minute (XShm copies happen
there), and the process's peak RSS during the run (VmHWM, reset before each scenario). Goal: a static
screen under 2% of one core and zero frames to the model after the first.

    python bench/screen.py                          # 60 s each on the tiny test model, 1920x1080 Xvfb
    python bench/screen.py --seconds 20 --model M.gguf --mmproj P.gguf
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from _common import add_model_flags, test_model_args  # noqa: E402
from screen_x11 import TkWindow, Xvfb  # noqa: E402

from omnid.daemon.prompt_cache import PromptCache  # noqa: E402
from omnid.daemon.scheduler import Scheduler  # noqa: E402
from omnid.modalities.screen_watcher import Observed, ScreenWatcher, WatchSettings  # noqa: E402
from omnid.modalities.windows import ExclusionRules  # noqa: E402
from omnid.models.loader import load_backend  # noqa: E402


def proc_cpu(pid: int | str = "self") -> float:
    """utime + stime of a process in seconds (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_reset() -> None:
    """Reset VmHWM so the next reading is this scenario's peak (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scenario(name: str, seconds: float, scheduler: Scheduler, max_side: int, xvfb: Xvfb,
                 window: TkWindow) -> dict[str, float | str]:
    answers: list[str] = []
    watcher = ScreenWatcher(WatchSettings(interval=1.0, monitor=1, max_image_side=max_side, max_tokens=32),
                            ExclusionRules(), scheduler)
    reader = threading.Thread(target=lambda: answers.extend(e.text for e in watcher.events()
                                                            if isinstance(e, Observed)), daemon=True)
    reader.start()
    stop = threading.Event()

    def change() -> None:
        colors = ["#2040c0", "#c04020", "#20a040", "#a0a020"]
        i = 0
        time.sleep(0.5)  # half a period off the grabs
        while not stop.wait(1.0):
            i += 1
            window.color(colors[i % len(colors)])
            window.text(f"step {i}: {time.strftime('%H:%M:%S')}")

    changer = threading.Thread(target=change, daemon=True) if name == "changing" else None
    peak_rss_reset()
    cpu0, x0, t0 = proc_cpu(), proc_cpu(xvfb.proc.pid), time.monotonic()
    watcher.start()
    if changer:
        changer.start()
    time.sleep(seconds)
    stop.set()
    watcher.stop()
    reader.join(10)
    wall = time.monotonic() - t0
    cpu, xcpu = proc_cpu() - cpu0, proc_cpu(xvfb.proc.pid) - x0
    c = watcher.counters
    per_min = 60.0 / wall
    return {"scenario": name, "seconds": wall, "grabbed": c.frames_grabbed, "sent": c.frames_sent,
            "unchanged": c.frames_unchanged, "excluded": c.frames_excluded, "answers": len(answers),
            "watcher_cpu_s_per_min": c.cpu_seconds * per_min, "core_pct": 100 * c.cpu_seconds / wall,
            "grab_ms_avg": 1000 * c.grab_seconds / max(1, c.frames_grabbed),
            "process_cpu_s_per_min": cpu * per_min, "xserver_cpu_s_per_min": xcpu * per_min,
            "peak_rss_mib": peak_rss_mib()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each scenario (default 60)")
    parser.add_argument("--size", default="1920x1080", help="the Xvfb screen size (default 1920x1080)")
    add_model_flags(parser)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="omnid-bench-screen-") as tmp:
        model = test_model_args(Path(tmp), args.model, args.mmproj, args.backend, args.decoder)
        xvfb = Xvfb(width, height)
        os.environ["DISPLAY"] = xvfb.display
        os.environ.pop("WAYLAND_DISPLAY", None)
        scheduler = Scheduler(lambda: load_backend(model["model"], model["mmproj"], model["backend"],
                                                   context_length=4096, threads=args.threads),
                              lambda b: PromptCache(b.info.fingerprint, 256 << 20))
        scheduler.start()
        window = TkWindow(xvfb.display, "Notes", f"{width // 2}x{height // 2}+100+100", "#2040c0")
        try:
            info = scheduler.backend.info
            print(f"model {info.name} ({info.backend}), vision encoder side {info.max_image_side}; "
                  f"screen {width}x{height} (Xvfb {xvfb.display}); 1 frame/s, {args.seconds:g} s per scenario")
            rows = [run_scenario(name, args.seconds, scheduler, info.max_image_side, xvfb, window)
                    for name in ("static", "changing")]
        finally:
            window.close()
            scheduler.stop()
            xvfb.close()

    cols = [("scenario", "{}"), ("seconds", "{:.0f}"), ("grabbed", "{}"), ("sent", "{}"), ("unchanged", "{}"),
            ("excluded", "{}"), ("watcher_cpu_s_per_min", "{:.3f}"), ("core_pct", "{:.2f}%"),
            ("grab_ms_avg", "{:.1f}"), ("process_cpu_s_per_min", "{:.2f}"), ("xserver_cpu_s_per_min", "{:.2f}"),
            ("peak_rss_mib", "{:.0f}")]
    cells = [[fmt.format(row[key]) for key, fmt in cols] for row in rows]
    widths = [max(len(key), *(len(c[i]) for c in cells)) for i, (key, _) in enumerate(cols)]
    print("  ".join(key.rjust(w) for (key, _), w in zip(cols, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
    static = rows[0]
    ok = static["core_pct"] < 2.0 and static["sent"] <= 1
    print(f"goal (static: < 2% of one core, no frames to the model after the first): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
