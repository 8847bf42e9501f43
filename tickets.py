"""Look at tickets and convert weights: a thin CLI around pruning_utils, ticket_stats and weights.

    python tickets.py inspect 5-ticket.pth.tar [--json OUT.json] [--png OUT.png]
    python tickets.py compare imp/5-ticket.pth.tar aimp/5-ticket.pth.tar [--json OUT.json] [--png OUT.png]
    python tickets.py export SAVE_DIR/5-ticket.pth.tar aimp-5.safetensors         # to share: bit-packed masks
    python tickets.py convert resnet50_l2_eps3.ckpt resnet50_l2_eps3.pth          # plain torchvision state dict
    python tickets.py overlap ROOT [--reference aimp]     # mask IoU between ticket families, for the report

inspect/compare/export read our tickets (packed or not), our checkpoints and the original's checkpoints, and refuse
a ticket whose masks do not give the digest it records; convert reads every format training/weights.py knows.
Add --trust-pickle only for a file you trust that holds more than tensors. The packed format: docs/TICKETS.md.
"""
from __future__ import annotations

import argparse
import os

from infra import checkpoint
from lottery import export, overlap, ticket_stats
from infra.errors import OneLineParser, UserError, run_cli
from pruning_utils import load_ticket, save_ticket
from training.weights import read_weights


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Inspect, compare and export lottery tickets; convert weights.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{inspect,compare,export,convert,overlap}")

    def common(p: argparse.ArgumentParser, outputs: bool) -> None:
        p.add_argument("--trust-pickle", action="store_true",
                       help="allow full unpickling (only for files you trust that hold more than tensors)")
        if outputs:
            p.add_argument("--json", metavar="OUT", default=None, help="also write the numbers as JSON")
            p.add_argument("--png", metavar="OUT", default=None, help="also draw per-layer sparsity bars")

    p = sub.add_parser("inspect", help="global and per-layer sparsity, level and metadata of one ticket")
    p.add_argument("file", help="ticket, IMP checkpoint (ours or the original's) or any file with weight_mask")
    common(p, outputs=True)
    p = sub.add_parser("compare", help="overlap (IoU of kept weights) and per-layer sparsity of two tickets")
    p.add_argument("a")
    p.add_argument("b")
    common(p, outputs=True)
    p = sub.add_parser("export", help="write the mask of a ticket or IMP checkpoint as a ticket to share: bit-packed "
                       "masks in a safetensors file (pickle-free), its family, init-weights digest and cost in the "
                       "header, no local path")
    p.add_argument("checkpoint", help="ticket, IMP checkpoint (ours or the original's) or any file with weight_mask")
    p.add_argument("out")
    p.add_argument("--unpacked", action="store_true",
                   help="a torch file of bool masks instead (4x the size), the format the original's downstream "
                   "script reads")
    common(p, outputs=False)
    p = sub.add_parser("convert", help="write pre-trained weights of any known format as a torchvision state dict")
    p.add_argument("init")
    p.add_argument("out")
    common(p, outputs=False)
    p = sub.add_parser("overlap", help="mask IoU of every ticket family's tickets with a reference family's at the "
                       "same sparsity, over the runs under ROOT: ROOT/ticket_overlap.json, read by report.py")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--reference", default=None, metavar="FAMILY",
                   help="the family compared against (default: aimp, else imp, else the one with most tickets)")
    common(p, outputs=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    trusted = args.trust_pickle
    if args.command == "inspect":
        mask, meta = load_ticket(args.file, trusted=trusted)
        summary = ticket_stats.summarize(mask, meta)
        print(ticket_stats.inspect_text(args.file, summary))
        _outputs(args, {"file": args.file, **summary}, {_label(args.file): summary["layers"]})
    elif args.command == "compare":
        mask_a, _ = load_ticket(args.a, trusted=trusted)
        mask_b, _ = load_ticket(args.b, trusted=trusted)
        result = ticket_stats.compare(mask_a, mask_b)
        print(ticket_stats.compare_text(args.a, args.b, result))
        label_a, label_b = _label(args.a), _label(args.b)
        if label_a == label_b:
            label_a, label_b = f"A: {label_a}", f"B: {label_b}"
        _outputs(args, {"a": args.a, "b": args.b, **result},
                 {label_a: _layers(result, "a"), label_b: _layers(result, "b")})
    elif args.command == "export":
        _refuse_overwrite(args.checkpoint, args.out)
        mask, meta = load_ticket(args.checkpoint, trusted=trusted)
        meta = export.shareable_meta(args.checkpoint, mask, meta, trusted=trusted)
        save_ticket(args.out, mask, meta, packed=not args.unpacked)
        size = os.path.getsize(args.out) / 2 ** 20
        print(f"wrote {args.out} ({size:.1f} MiB{', packed' if not args.unpacked else ''}): mask of {len(mask)} "
              f"layers at sparsity {100 * meta['sparsity']:.2f}%, family {meta['family']}, init digest "
              f"{meta.get('init_digest', 'not recorded')}, from {args.checkpoint}")
    elif args.command == "overlap":
        overlap.write_overlap(args.root, args.reference, trusted=trusted)
    else:
        _refuse_overwrite(args.init, args.out)
        weights = read_weights(args.init, trusted=trusted)
        # clone: a tensor viewing a larger storage would otherwise save that whole storage
        checkpoint.atomic_save({k: v.detach().clone() for k, v in weights.state_dict.items()}, args.out)
        note = "" if "fc.weight" in weights.state_dict else \
            " (no fc head: torchvision's load_state_dict needs strict=False or a replaced head)"
        print(f"{weights.describe()} -> wrote {args.out} as a torchvision state dict{note}")
    return 0


def _outputs(args: argparse.Namespace, numbers: dict, bars: dict[str, dict]) -> None:
    if args.json:
        checkpoint.atomic_write_json(args.json, numbers)
        print(f"wrote {args.json}")
    if args.png:
        ticket_stats.plot_sparsity(args.png, bars)
        print(f"wrote {args.png}")


def _layers(result: dict, side: str) -> dict[str, dict]:
    return {name: {"sparsity": row[f"sparsity_{side}"]} for name, row in result["layers"].items()}


def _label(path: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(path))) + "/" + os.path.basename(path)


def _refuse_overwrite(source: str, out: str) -> None:
    if os.path.exists(out) and os.path.exists(source) and os.path.samefile(source, out):
        raise UserError(f"OUT {out} is the input file itself: choose another output path")


if __name__ == "__main__":
    run_cli(main)
