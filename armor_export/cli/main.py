"""``armor-export <verb>``: parse arguments into configs, call the verbs, report.

Imports of torch/transformers happen inside the verbs so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from armor_export import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CHATTY_LIBRARIES = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")
# one module per verb in armor_export/cli/ (add_parser(sub), run(args)), in --help order;
# a new verb is its module plus its name here
VERBS = (
    "build",
    "plan",
    "prune",
    "quantize",
    "evaluate",
    "export",
    "engine",
    "verify",
    "generate",
    "report",
    "env",
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--log-file", help="also write the log to this file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="armor-export",
        description="ARMOR 2:4 pruning of Hugging Face causal LMs, evaluation and export.",
    )
    parser.add_argument("--version", action="version", version=f"armor-export {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name in VERBS:
        module = importlib.import_module(f"armor_export.cli.{name}")
        p = module.add_parser(sub)
        _common(p)
        p.set_defaults(handler=module.run)
    return parser


def _setup_logging(args) -> None:
    """Log to stderr (stdout carries the verbs' results, e.g. JSON) and to ``--log-file``."""
    from rich.console import Console
    from rich.logging import RichHandler

    from armor_export.errors import UserError

    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    console = Console(stderr=True)
    handlers: list[logging.Handler] = [
        RichHandler(console=console, show_path=False, show_time=False)
    ]
    if args.log_file:
        try:
            fh = logging.FileHandler(args.log_file)
        except OSError as exc:
            raise UserError(f"cannot open log file {args.log_file}: {exc.strerror}") from None
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(fh)
    logging.basicConfig(level=level, handlers=handlers, format="%(message)s", force=True)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # the exporter's libraries narrate at INFO (dozens of "Skipping constant folding ..."
    # lines per export): only their warnings, unless -v asks for more
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(level if args.verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from armor_export import lifetime
    from armor_export.errors import UserError
    from armor_export.io import user_os_error

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        # SIGTERM (a scheduler, kill, a closed session) stops a verb as Ctrl-C does: what is
        # finished stays, workers and children are stopped, and the exit code is the same
        with lifetime.sigterm_as_interrupt():
            _setup_logging(args)
            return args.handler(args)
    except (UserError, OSError) as exc:
        # an OSError the user fixes (full disk, read-only folder...) is one line too; any
        # other is a bug and keeps its traceback
        error = exc if isinstance(exc, UserError) else user_os_error(exc)
        if error is None:
            raise
        print(f"armor-export {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print(f"armor-export {args.verb}: interrupted (finished work is kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
