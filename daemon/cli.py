"""`omnid`: run the daemon (`omnid serve`) and make the tiny test model (`omnid make-test-model`)."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from importlib import metadata
from pathlib import Path

from omnid.daemon.config import (DaemonConfig, cache_dir, data_dir, default_ram_budget, default_socket_path,
                                 default_token_path)
from omnid.models.context_size import MAX_SEQUENCES
from omnid.models.registry import backend_names

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'512M', '4G', '1.5GiB', '1000000' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 4G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
#: llama.cpp's smallest context; a smaller --ctx would be raised to this silently.
MIN_CONTEXT = 256


def parse_duration(text: str) -> float:
    """'30m', '2h', '90s', '45' (seconds), '0' (off) -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 2h)")
    number, unit = match.groups()
    return float(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[(unit or "s").lower()]


def sequences(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_SEQUENCES:
        raise argparse.ArgumentTypeError(f"--parallel takes 1..{MAX_SEQUENCES} sequences, not {value}")
    return value


def context_tokens(text: str) -> int:
    value = int(text)
    if value < MIN_CONTEXT:
        raise argparse.ArgumentTypeError(f"the context must be at least {MIN_CONTEXT} tokens, not {value}")
    return value


def version() -> str:
    try:
        return metadata.version("omnid")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnid", description="On-device multimodal assistant daemon.")
    parser.add_argument("--version", action="version", version=f"omnid {version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="load one model and serve it over gRPC",
                                description="Load one model, keep it warm, and serve it over gRPC.")
    serve.add_argument("--model", default="", help="a .gguf file (llama.cpp) or an MLX model folder / repo id "
                       "(default: the embedded text-only gemma-3-270m)")
    serve.add_argument("--mmproj", default="",
                       help="the multimodal projector GGUF (images, audio) for --model (default: none, text only)")
    serve.add_argument("--backend", default="auto", choices=["auto", *backend_names()],
                       help="the inference library (default: auto, from what --model is)")
    serve.add_argument("--ctx", type=context_tokens, default=0,
                       help=f"context length in tokens, at least {MIN_CONTEXT}; more than memory holds is refused "
                            "with the number that fits (default: the model's trained context, capped by memory)")
    serve.add_argument("--parallel", type=sequences, default=0, metavar="N",
                       help="decoder sequences held at once: requests decoded together, each with the whole --ctx; "
                            "more than memory holds is refused with the number that fits (default: 4 where "
                            "memory holds them, fewer where not; --backend remote: requests sent to the engine at "
                            "once, default 8)")
    serve.add_argument("--threads", type=int, default=None,
                       help="CPU threads for the decoder (default: the number of physical cores)")
    serve.add_argument("--flash-attn", action="store_true",
                       help="flash attention (llama.cpp): less memory for long contexts and faster on GPUs, but "
                            "3-12x slower prompt evaluation on CPUs (bench/prompt_cache.py --flash-attn); changes "
                            "logits slightly, so cached prefixes are kept apart from those without it (default: off)")
    serve.add_argument("--socket", type=Path, default=None, help=f"Unix socket path (default: {default_socket_path()})")
    serve.add_argument("--tcp", default="", metavar="HOST:PORT",
                       help="also listen on a loopback HOST:PORT, with a token (default: no TCP)")
    serve.add_argument("--http", default="", metavar="HOST:PORT",
                       help="also serve the OpenAI-compatible HTTP API on a loopback HOST:PORT, with the same token "
                            "(default: no HTTP)")
    serve.add_argument("--token-file", type=Path, default=None,
                       help=f"the TCP and HTTP token, created if missing (default: {default_token_path()})")
    serve.add_argument("--allow-read", type=Path, action="append", default=[], metavar="DIR",
                       help="a folder whose files clients may name by path (repeatable; default: none)")
    serve.add_argument("--max-queue", type=int, default=16,
                       help="requests that may wait for the decoder; more get RESOURCE_EXHAUSTED (default: 16)")
    serve.add_argument("--max-streams", type=int, default=8,
                       help="screen watch and live meeting streams open at once; more get RESOURCE_EXHAUSTED "
                            "(default: 8)")
    serve.add_argument("--cache-ram", type=parse_size, default=None,
                       help=f"prompt cache RAM budget, e.g. 4G (default: a quarter of available memory, "
                            f"{default_ram_budget() / 2**30:.1f}G now)")
    serve.add_argument("--cache-disk", default=None,
                       help=f"prompt cache disk folder, or 'off' (default: {cache_dir() / 'prompt-cache'})")
    serve.add_argument("--cache-disk-size", type=parse_size, default=None,
                       help="prompt cache disk budget (default: 8G)")
    serve.add_argument("--data-dir", type=Path, default=None,
                       help=f"where documents, meetings and screen history live (default: {data_dir()})")
    serve.add_argument("--max-document-pages", type=int, default=500,
                       help="refuse PDFs with more pages than this (default: 500)")
    serve.add_argument("--screen-history-size", type=parse_size, default=256 << 20,
                       help="bytes of screen history to keep; the oldest go first (default: 256M)")
    serve.add_argument("--idle-unload", type=parse_duration, default=0.0, metavar="DURATION",
                       help="free the model's memory after this long without requests, e.g. 30m; the next request "
                            "loads it again (default: 0 = never)")
    serve.add_argument("--exit-with-parent", action="store_true",
                       help="stop when the process that started omnid exits (apps running it as a child, test "
                            "harnesses; default: off)")
    serve.add_argument("--remote-url", action="append", default=[], metavar="URL",
                       help="--backend remote: an OpenAI-compatible engine (vLLM, SGLang, llama-server), e.g. "
                            "http://127.0.0.1:8000/v1; repeatable (requests sharing a prefix stay on one engine)")
    serve.add_argument("--remote-model", default="", metavar="NAME",
                       help="--backend remote: the model name the engines serve (default: the first they list)")
    serve.add_argument("--remote-token-file", type=Path, default=None, metavar="FILE",
                       help="--backend remote: a file (mode 0600) holding the engines' API key (default: none)")
    serve.add_argument("--remote-insecure", action="store_true",
                       help="--backend remote: allow plain http to a host that is not this machine (default: only "
                            "https leaves it; https certificates are always verified)")
    serve.add_argument("-v", "--verbose", action="store_true",
                       help="log each request, and the backend's own logs (llama.cpp, mlx-vlm) on stderr")

    make = commands.add_parser("make-test-model", help="write a tiny random-weight omni model",
                               description="Write a tiny random-weight omni model (text + vision + audio) "
                                           "to run the whole path on without downloading anything.")
    make.add_argument("directory", type=Path, help="the folder to write the model files into")
    make.add_argument("--backend", default="llama.cpp", choices=backend_names(),
                      help="GGUF files for llama.cpp, or an MLX folder for mlx-vlm (default: llama.cpp)")
    make.add_argument("--decoder", default="nemotron_h_moe", choices=["nemotron_h_moe", "llama"],
                      help="llama.cpp text decoder: the hybrid Mamba2/attention/MoE one of Nemotron 3 Nano Omni "
                           "(default) or an attention-only llama")
    make.add_argument("--no-vision", action="store_true", help="leave out the vision encoder")
    make.add_argument("--no-audio", action="store_true", help="leave out the audio encoder")
    make.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    return parser


def config_from(args: argparse.Namespace) -> DaemonConfig:
    config = DaemonConfig(model=args.model, mmproj=args.mmproj, backend=args.backend, context_length=args.ctx,
                          parallel=args.parallel,
                          threads=args.threads, flash_attn=args.flash_attn, tcp=args.tcp, http=args.http,
                          token_file=args.token_file, max_queue=args.max_queue, max_streams=args.max_streams,
                          allow_read=list(args.allow_read),
                          max_document_pages=args.max_document_pages,
                          screen_history_bytes=args.screen_history_size,
                          parent_pid=os.getppid() if args.exit_with_parent else None,
                          idle_unload_seconds=args.idle_unload, verbose=args.verbose,
                          remote_urls=list(args.remote_url), remote_model=args.remote_model,
                          remote_token_file=args.remote_token_file, remote_insecure=args.remote_insecure)
    if args.socket:
        config.socket_path = args.socket
    if args.cache_ram is not None:
        config.cache_ram_bytes = args.cache_ram
    if args.cache_disk is not None:
        config.cache_disk_dir = None if args.cache_disk == "off" else Path(args.cache_disk)
    if args.cache_disk_size is not None:
        config.cache_disk_bytes = args.cache_disk_size
    if args.data_dir:
        config.data_dir = args.data_dir
    return config


def make_test_model(args: argparse.Namespace) -> int:
    if args.backend == "mlx":
        from omnid.models.mlx_test_model import write_mlx_test_model
        folder = write_mlx_test_model(args.directory, seed=args.seed)
        print(f"wrote {folder}\nrun: omnid serve --model {folder}")
        return 0
    from omnid.models.gguf_test_model import write_test_model
    paths = write_test_model(args.directory, decoder=args.decoder, vision=not args.no_vision, audio=not args.no_audio,
                             seed=args.seed)
    mmproj = f" --mmproj {paths.mmproj}" if paths.mmproj else ""
    print(f"wrote {paths.text}" + (f"\nwrote {paths.mmproj}" if paths.mmproj else ""))
    print(f"run: omnid serve --model {paths.text}{mmproj}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.screen_history_size < 64 * 1024:
        parser.error("--screen-history-size must be at least 64K")
    if args.command == "serve" and args.max_streams < 1:
        parser.error("--max-streams must be at least 1")
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="omnid: %(message)s", stream=sys.stderr)
    if args.command == "make-test-model":
        return make_test_model(args)
    from omnid.daemon.server import serve
    return serve(config_from(args))


if __name__ == "__main__":
    sys.exit(main())
