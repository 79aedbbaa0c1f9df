"""slicevos-label: label a CT in the browser from a few drawn slices.

    slicevos-label SCAN [--labels start.nii.gz] [--out labels.nii.gz] [--schema flare22]
                   [--propagation prop.pt [--propagator stcn|guided|fused]] [--port 8765] [--open]
                   [--dicom-seg | --no-dicom-seg]

SCAN is a NIfTI file or a DICOM series folder. The server binds 127.0.0.1 (``--host``
changes that, with a warning) and prints the page's URL with a random access token. Draw on
axial slices, press Propagate (optical flow; the STCN or both fused with a checkpoint),
correct slices (only their two neighbouring segments are redone) and Save: the labels are
written in the scan's own geometry with the JSON label map, and for a DICOM series a
DICOM-SEG <out>_seg.dcm beside them when highdicom is installed (--dicom-seg: required,
--no-dicom-seg: never; docs/interoperability.md). Every drawn key slice is
autosaved to ``<out>.label-session/`` beside the output; running the same command again
resumes (the page offers to discard). Ctrl-C stops after a final save of the session state.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import webbrowser
from collections.abc import Sequence
from pathlib import Path

from slicevos.cli.common import PROPAGATORS, run_cli
from slicevos.errors import InputError

log = logging.getLogger("slicevos.label")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def default_output(scan: Path) -> Path:
    """``ct.nii.gz`` or a DICOM folder ``ct`` -> ``./ct_labels.nii.gz``."""
    from slicevos.io.nifti import strip_nifti_suffix

    return Path.cwd() / f"{strip_nifti_suffix(scan.name) or 'scan'}_labels.nii.gz"


def check_output(output: Path, inputs: Sequence[Path | None]) -> Path:
    from slicevos.io.nifti import is_nifti

    if not is_nifti(output):
        raise InputError(output, "output name must end in .nii or .nii.gz", "rename --out")
    for path in inputs:
        if path is not None and output.resolve() == path.resolve():
            raise InputError(output, "--out names an input file, which is never overwritten",
                             "pass another --out")
    return output


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(f"--port {port}", f"cannot listen on {host}:{port} ({err.strerror})",
                         "pass another --port (0 picks a free one)") from None
    sock.listen(64)
    return sock


def serve(app, sock: socket.socket, url: str, open_browser: bool) -> None:
    """Run ``app`` on ``sock`` until Ctrl-C / SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"slicevos-label: open {url}", flush=True)
    print("  (Ctrl-C stops the server; every drawn slice is already autosaved)", flush=True)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the signal once it has shut down
        pass


def _body(args: argparse.Namespace) -> int:
    from slicevos.inference.engines import checkpoint_engine
    from slicevos.io.labels import get_schema
    from slicevos.labeler.server import create_app, create_error_app, new_token
    from slicevos.labeler.state import open_labeler

    scan = Path(args.scan)
    start = Path(args.labels) if args.labels else None
    checkpoint = Path(args.propagation) if args.propagation else None
    engine = args.propagator or (checkpoint_engine(checkpoint) if checkpoint else "flow")
    if args.host not in LOCAL_HOSTS:
        log.warning("warning: serving on %s, not 127.0.0.1: anyone who can reach this machine "
                    "and has the token can see the scan and change the labels", args.host)
    sock = bind(args.host, args.port)
    token = new_token()
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}/?token={token}"
    try:
        output = check_output(Path(args.out) if args.out else default_output(scan),
                              [scan, start, checkpoint])
        schema = get_schema(args.schema)
        labeler = open_labeler(scan, output, schema, engine, checkpoint, start, args.dicom_seg)
    except InputError as err:
        if not args.open:
            sock.close()
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        serve(create_error_app(str(err), token), sock, url, True)
        return 2
    if labeler.resumed:
        print(f"slicevos-label: resumed {labeler.resumed} key slice(s) from "
              f"{labeler.sidecar.folder} (the page offers to discard them)", flush=True)
    print(f"slicevos-label: {scan.name} {labeler.hu.shape[2]}x{labeler.hu.shape[1]}x"
          f"{labeler.hu.shape[0]}, {labeler.propagator.name} engine; saves to {output}",
          flush=True)
    try:
        serve(create_app(labeler, token), sock, url, args.open)
    finally:
        labeler.close()
        print(f"slicevos-label: session state saved in {labeler.sidecar.folder}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slicevos-label", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("scan", help="CT scan: NIfTI file or DICOM series folder")
    parser.add_argument("--labels", help="start labels on the scan's grid: their drawn slices "
                        "become key slices")
    parser.add_argument("--out", help="label file to write (.nii.gz; default "
                        "./<scan>_labels.nii.gz); the autosave folder goes beside it")
    parser.add_argument("--schema", default="flare22", help="label schema: flare22 (default), "
                        "flare23 or objects")
    parser.add_argument("--propagation", help="propagation checkpoint (STCN); without it the "
                        "optical-flow engine runs")
    parser.add_argument("--propagator", choices=PROPAGATORS,
                        help="propagation engine (default: flow; with --propagation, stcn, or "
                        "guided for a flow-guided checkpoint)")
    parser.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=None,
                        help="save a DICOM-SEG <out>_seg.dcm too (default: for a DICOM series "
                        "when highdicom is installed); --dicom-seg fails on NIfTI or without "
                        "highdicom")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default "
                        "127.0.0.1; anything else is reachable from other machines)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--open", action="store_true", help="open the page in the default "
                        "browser")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
