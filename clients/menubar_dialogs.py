"""The menubar's small native windows (Tk), each run as its own process: `python -m omnid.clients.menubar_dialogs`.

    ask TITLE PROMPT      a one-line question; prints it (exit 0), or exits 1 when cancelled
    open-pdf              a file chooser for a PDF; prints the path, or exits 1
    show TITLE            a read-only text window that shows stdin as it arrives (an answer streams into it)

Why processes: a tray library owns its thread's event loop (on macOS the main thread's), and Tk wants its
own; a window per process never shares a loop with pystray, works the same on every platform, and a dialog
that hangs cannot take the tray with it. `dialogs_available()` says whether Tk can open a window here.
"""
from __future__ import annotations

import codecs
import os
import subprocess
import sys
import threading
from typing import IO

_MODULE = "omnid.clients.menubar_dialogs"


def dialogs_available() -> bool:
    """Tk is installed and (on X11) there is a display to open windows on."""
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return False
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY"))


def ask(title: str, prompt: str) -> str | None:
    """What the user typed (None: cancelled, or no dialogs here)."""
    return _run_for_output("ask", title, prompt)


def choose_pdf() -> str | None:
    return _run_for_output("open-pdf")


def show(title: str) -> IO[str] | None:
    """A window showing what is written to the returned stream (close the stream when done); None: no dialogs."""
    if not dialogs_available():
        return None
    process = subprocess.Popen([sys.executable, "-m", _MODULE, "show", title], stdin=subprocess.PIPE, text=True)
    return process.stdin


def _run_for_output(*args: str) -> str | None:
    if not dialogs_available():
        return None
    result = subprocess.run([sys.executable, "-m", _MODULE, *args], capture_output=True, text=True)
    answer = result.stdout.strip()
    return answer if result.returncode == 0 and answer else None


# -- the windows (in the dialog's own process) ----------------------------------------------------------------

def _ask_window(title: str, prompt: str) -> int:
    import tkinter as tk
    root = tk.Tk(className="omnid-dialog")
    root.title(title)
    tk.Label(root, text=prompt, anchor="w").pack(fill="x", padx=10, pady=(10, 4))
    entry = tk.Entry(root, width=60)
    entry.pack(fill="x", padx=10)
    answer: list[str] = []

    def ok(_: object = None) -> None:
        answer.append(entry.get())
        root.destroy()
    buttons = tk.Frame(root)
    buttons.pack(fill="x", padx=10, pady=10)
    tk.Button(buttons, text="Ask", command=ok, default="active").pack(side="right")
    tk.Button(buttons, text="Cancel", command=root.destroy).pack(side="right", padx=6)
    root.bind("<Return>", ok)
    root.bind("<Escape>", lambda _: root.destroy())
    root.after(50, entry.focus_force)
    root.mainloop()
    if answer and answer[0].strip():
        print(answer[0].strip())
        return 0
    return 1


def _pdf_window() -> int:
    import tkinter as tk
    from tkinter import filedialog
    root = tk.Tk(className="omnid-dialog")
    root.withdraw()
    path = filedialog.askopenfilename(title="omnid: add a PDF", filetypes=[("PDF", "*.pdf"), ("All files", "*")])
    root.destroy()
    if path:
        print(path)
        return 0
    return 1


def _show_window(title: str) -> int:
    import tkinter as tk
    root = tk.Tk(className="omnid-dialog")
    root.title(title)
    text = tk.Text(root, width=80, height=20, wrap="word")
    text.pack(fill="both", expand=True, padx=8, pady=8)
    text.configure(state="disabled")
    tk.Button(root, text="Close", command=root.destroy).pack(pady=(0, 8))
    root.bind("<Escape>", lambda _: root.destroy())
    pieces: list[str] = []

    def read() -> None:  # raw chunks, not lines: an answer's pieces rarely end a line
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(sys.stdin.fileno(), 4096):
            pieces.append(decoder.decode(chunk))
    threading.Thread(target=read, daemon=True).start()

    def poll() -> None:
        if pieces:
            text.configure(state="normal")
            while pieces:
                text.insert("end", pieces.pop(0))
            text.configure(state="disabled")
            text.see("end")
        root.after(50, poll)
    root.after(50, poll)
    root.mainloop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["ask"] and len(args) == 3:
        return _ask_window(args[1], args[2])
    if args == ["open-pdf"]:
        return _pdf_window()
    if args[:1] == ["show"] and len(args) == 2:
        return _show_window(args[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
