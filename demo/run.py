"""The whole double-win pipeline on built-in data, offline on a CPU, through the same bash scripts as on GPUs.

    bash script/demo.sh                 # about 6 minutes on 2 cores; files under demo_out/
    bash script/demo.sh --quick         # the shortened version the test suite runs
    bash script/demo.sh --study         # robust vs standard pre-training, replicated; demo_out/study/

Stages: make data -> pre-train a small ResNet (standard and adversarial; stands in for downloaded ImageNet
weights) -> A-IMP, early-bird A-IMP, OMP / IMP tickets -> standard and adversarial transfer of the dense model and every ticket ->
double-win report (sizes and seeds of each: demo/config.py). Re-running skips finished stages (every stage resumes from its files).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from demo.config import COMMON, DemoConfig, Family, families, transfer_overrides  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- helpers
def say(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: list[str], log_path: str) -> None:
    """Run one pipeline step; its log goes to a file (the run also keeps its own log.txt), bars to stderr."""
    env = dict(os.environ, DOUBLEWIN_PY=sys.executable, PYTHONHASHSEED="0")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT if not sys.stderr.isatty() else None,
                               env=env, cwd=ROOT)
    if code != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-15:])
        raise SystemExit(f"demo step failed (exit {code}): {' '.join(cmd)}\n--- last lines of {log_path}\n{tail}")


# ---------------------------------------------------------------------------- stages
def pretrain(cfg: DemoConfig, data: str, kind: str, path: str) -> None:
    """Train resnet_tiny on the pre-training task; adversarially (PGD-3, 8/255) for the robust kind.

    Saved as a plain torchvision-format state dict, like a downloaded checkpoint."""
    if os.path.exists(path):
        say(f"  {kind}: {path} exists, skipped")
        return
    import attacks
    from infra import checkpoint
    import dataset
    from training import engine
    import models
    from infra import reproducibility

    reproducibility.seed_all(cfg.seed)
    with reproducibility.kernel_mode(deterministic=True):
        splits = dataset.build_datasets("imagenet", data, image_size=32, resize_size=32)
        model = models.resnet_tiny(splits.num_classes, small_input=True, mean=splits.mean, std=splits.std)
        epochs = 3 if cfg.quick else 9
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        # the A-IMP recipe's attack: PGD-3, eps 8/255, step 16/(3*255)
        attack = attacks.PGD(8 / 255, 16 / 765, 3) if kind == "robust" else None
        val = torch.utils.data.DataLoader(splits.val, batch_size=128)
        for epoch in range(epochs):
            gen = reproducibility.epoch_generator(cfg.seed, epoch)
            loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True, generator=gen)
            stats = engine.train_one_epoch(model, loader, opt, engine.Step(attack=attack), epoch=epoch,
                                           desc=f"pre-train {kind} {epoch + 1}/{epochs}")
            sched.step()
        sa = engine.evaluate(model, val, engine.Step(show_progress=False))["top1"]
    say(f"  {kind}: {epochs} epochs, train acc {stats['top1']:.1f}%, val SA {sa:.1f}% -> {path}")
    checkpoint.atomic_save(model.state_dict(), path)


def imp_flags(cfg: DemoConfig, fam: Family) -> list[str]:
    """The IMP script's flags after its three paths, less --seed: the same whether the demo runs the script itself
    or the study's campaign runs it once per IMP seed."""
    flags = ["-a", "resnet_tiny", *COMMON, "-b", "64", "-j", "0", "--lr", "0.01", "--rate", "0.5", "--no-progress"]
    if fam.name == "omp":
        return [*flags, "--omp-level", str(fam.levels[0])]
    e = cfg.epochs_per_level
    return [*flags, "--prune_epoch", str(e), "--epochs", str(e * cfg.levels), *fam.flags]


def by_campaign(cfg: DemoConfig, fam: Family) -> bool:
    """Whether the transfer campaign finds this family's tickets itself (an IMP stage per IMP seed): the study's
    trained families. OMP has no training, hence nothing for a seed to change: the demo runs it once."""
    return len(cfg.imp_seeds) > 1 and fam.name != "omp"


def find_tickets(cfg: DemoConfig, fam: Family) -> None:
    script = "imp_adv.sh" if fam.kind == "robust" else "imp_std.sh"
    save = os.path.join(cfg.out, "tickets", fam.folder)
    if by_campaign(cfg, fam):
        say(f"  {fam.title} from the {fam.kind} model: {len(cfg.imp_seeds)} IMP seeds {list(cfg.imp_seeds)}, run by "
            f"the campaign below as one IMP stage each -> {save}/seed<k>")
        return
    from infra import paths
    if os.path.exists(paths.imp_ticket(save, fam.levels[-1])):  # written last, atomically: the run is complete
        say(f"  {fam.title}: {save} holds its tickets, skipped")
        return
    init = os.path.join(cfg.out, "pretrained", f"{fam.kind}.pth")
    data = os.path.join(cfg.out, "data", "pretrain")
    cmd = ["bash", os.path.join(ROOT, "script", "imp_pretrain", script), init, save, data, *imp_flags(cfg, fam),
           "--seed", str(cfg.imp_seeds[0])]
    if fam.name == "omp":
        say(f"  {fam.title}: level {fam.levels[0]}'s sparsity at once -> {save}")
    else:
        say(f"  {fam.title} from the {fam.kind} model: {cfg.levels} levels, rate 0.5 (the paper: 0.2), "
            f"{cfg.epochs_per_level} epochs per level -> {save}")
    run(cmd, os.path.join(save, "demo-stdout.txt"))


def early_bird_summary(cfg: DemoConfig, fam: Family) -> str:
    """What the early-bird rule did in each level of `fam` (from its metrics rows): a detection is a stop after the
    distances fell under the threshold; a stop at the first epoch the window allows, with every distance already
    under it, is only a shorter level."""
    from infra import checkpoint
    from infra import paths
    rows = checkpoint.read_jsonl(os.path.join(cfg.out, "tickets", fam.folder, paths.METRICS))
    flags = dict(zip(fam.flags[::2], fam.flags[1::2]))
    threshold, window, full = float(flags["--early-bird"]), int(flags["--early-bird-window"]), cfg.epochs_per_level
    levels = sorted({r["level"] for r in rows})
    lines, saved, detected = [], 0, 0
    for level in levels:
        mine = [r for r in rows if r["level"] == level]
        shown = ", ".join(f"{r['mask_distance']:.4f}" for r in mine if r.get("mask_distance") is not None)
        saved += full - len(mine)
        if len(mine) >= full or not any(r.get("early_bird_stop") for r in mine):
            how = f"trained all {full} epochs"
        elif len(mine) == window:
            how = f"stopped after {len(mine)} of {full} epochs, as early as a window of {window} allows"
        else:
            how, detected = f"stopped after {len(mine)} of {full} epochs: detected", detected + 1
        lines.append(f"    level {level}: distances {shown or '-'}; {how}")
    total = full * len(levels)
    if detected:
        verdict = f"early-bird detected in {detected} of {len(levels)} levels, saving {saved} of {total} epochs"
    elif saved:
        verdict = (f"early-bird detected nothing: where it stopped, the distances were under {threshold:g} from the "
                   f"start, so it saved {saved} of {total} epochs only as shorter levels (--prune_epoch {window}) do")
    else:
        verdict = "early-bird saved no epoch: every level trained its full schedule, as A-IMP's do"
    return "\n".join([f"  {fam.title}: distance between consecutive epochs' masks (0 same, 1 disjoint), threshold "
                      f"{threshold:g}, window {window}:", *lines, "  " + verdict])


def ticket_dirs(cfg: DemoConfig, fam: Family) -> list[str]:
    """Where the family's tickets are: its folder, or one folder per IMP seed (the campaign's dir/seed<k>)."""
    save = os.path.join(cfg.out, "tickets", fam.folder)
    return [os.path.join(save, f"seed{k}") for k in cfg.imp_seeds] if by_campaign(cfg, fam) else [save]


def tickets_of(cfg: DemoConfig, fam: Family) -> list[str]:
    from infra import paths
    return [paths.imp_ticket(d, k) for d in ticket_dirs(cfg, fam) for k in fam.levels
            if os.path.exists(paths.imp_ticket(d, k))]


def write_campaign(cfg: DemoConfig) -> str:
    """The transfer stage as a campaign spec (see README, "The campaign"): dense + every ticket, std and adv; the
    study's trained families with their IMP stages (`seeds`: one per IMP seed)."""
    def flags(items: list[str]) -> str:
        return "[" + ", ".join(json.dumps(x) for x in items) + "]"
    common, std, adv = transfer_overrides(cfg)
    text = [f"root = {json.dumps(os.path.join(cfg.out, 'transfer'))}",
            f"data = {json.dumps(os.path.join(cfg.out, 'data', 'downstream'))}",
            f"overrides = {flags(common)}", f"std_overrides = {flags(std)}", f"adv_overrides = {flags(adv)}"]
    for kind in cfg.kinds:
        text += ["", "[[init]]", f"name = {json.dumps(kind)}",
                 f"weights = {json.dumps(os.path.join(cfg.out, 'pretrained', f'{kind}.pth'))}",
                 'datasets = ["folder"]', 'modes = ["std", "adv"]', f"seeds = {list(cfg.transfer_seeds)}"]
        for fam in (f for f in families(cfg) if f.kind == kind):
            staged = by_campaign(cfg, fam)
            levels = list(fam.levels) if staged else [int(os.path.basename(t).split("-")[0])
                                                       for t in tickets_of(cfg, fam)]
            text += ["", "[[init.tickets]]", f"name = {json.dumps(fam.name)}",
                     f"dir = {json.dumps(os.path.join(cfg.out, 'tickets', fam.folder))}", f"levels = {levels}"]
            if staged:
                text += ["[init.tickets.imp]", f"kind = {json.dumps('adv' if kind == 'robust' else 'std')}",
                         f"data = {json.dumps(os.path.join(cfg.out, 'data', 'pretrain'))}",
                         f"seeds = {list(cfg.imp_seeds)}", "paired = true",
                         f"overrides = {flags(imp_flags(cfg, fam))}"]
    path = os.path.join(cfg.out, "campaign.toml")
    with open(path, "w") as f:
        f.write("\n".join(text) + "\n")
    return path


def transfer_all(cfg: DemoConfig) -> str:
    """Every transfer run through the campaign tool's local queue, two at a time with a core each."""
    spec = write_campaign(cfg)
    env = dict(os.environ, DOUBLEWIN_PY=sys.executable, PYTHONHASHSEED="0")
    code = subprocess.call([sys.executable, os.path.join(ROOT, "sweep.py"), "run", spec, "--local", "--jobs", "2"],
                           env=env, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"demo step failed: python sweep.py run {spec} --local (the FAILED lines above name the "
                         "runs; each run's output is in its SAVE_DIR/stdout.txt)")
    return spec


def summary_line(save: str) -> str:
    from infra.paths import RESULTS
    with open(os.path.join(save, RESULTS)) as f:
        r = json.load(f)
    b = r["best_sa"]
    return f"sparsity {100 * r.get('sparsity', 0):5.1f}%  test SA {b['test_sa']:5.1f}  RA {b['test_ra']:5.1f}"


def say_runs(cfg: DemoConfig) -> None:
    """Each transfer run's test numbers (the study's are too many: its report has them)."""
    seed = cfg.transfer_seeds[0]
    if cfg.study:
        say(f"  {len(cfg.kinds)} pre-trained models x their tickets x std/adv x transfer seeds "
            f"{list(cfg.transfer_seeds)}: every run's numbers are in the report below")
        return
    for kind in cfg.kinds:
        tags = ["dense"] + [f"{f.name}-{os.path.basename(t).split('-')[0]}" for f in families(cfg) if f.kind == kind
                            for t in tickets_of(cfg, f)]
        for tag in tags:
            for regime in ("std", "adv"):
                save = os.path.join(cfg.out, "transfer", kind, "folder-1", tag, regime, f"s{seed}")
                say(f"  {kind:8s} {tag:12s} {regime}: {summary_line(save)}")


def cost_table(cfg: DemoConfig) -> str:
    """What finding each family's tickets cost on this CPU (the ledger its deepest transferred ticket carries:
    every level that made it), beside the family's highest double-win sparsity from the report."""
    import pruning_utils
    from infra import checkpoint
    from infra import paths
    with open(os.path.join(cfg.out, "report", "report.json")) as f:
        groups = json.load(f)["groups"]
    best = {(g["init"], c["family"]): c["highest"] for g in groups for c in g["families"]}
    lines = ["ticket finding, measured on this CPU (the cumulative ledger of each family's deepest ticket):",
             f"  {'init':8s}  {'family':8s}  {'epochs':>6s}  {'seconds':>8s}  {'GFLOP':>9s}  highest double-win"]
    for fam in families(cfg):
        last = ticket_dirs(cfg, fam)[-1]  # with several IMP seeds: the last seed's (each costs about the same)
        found = [t for t in tickets_of(cfg, fam) if os.path.dirname(t) == last]
        if not found:
            continue
        cost = pruning_utils.load_ticket(found[-1])[1].get("cost") or {}
        epochs = len(checkpoint.read_jsonl(os.path.join(last, paths.METRICS)))
        h = best.get((fam.kind, fam.name))
        lines.append(f"  {fam.kind:8s}  {fam.name:8s}  {epochs:>6d}  {cost.get('device_s', 0):>8.1f}  "
                     f"{cost.get('flop', 0) / 1e9:>9.1f}  {'none' if h is None else f'{100 * h:.2f}%'}")
    return "\n".join(lines)


def verdict_lines(report_json: str) -> str:
    """Each ticket cell's call from the report (double-win / not double-win / inconclusive) with its reason."""
    with open(report_json) as f:
        rep = json.load(f)
    m = rep["margin"]
    lines = [f"the verdict per ticket (report.py --checkpoint {rep['checkpoint']} --verdict {rep['verdict']}: "
             "one-sided "
             f"{100 * rep['confidence']:g}% bounds on ticket - dense, margin {m:g} accuracy point{'s' * (m != 1)}; "
             "see docs/VERDICT.md):"]
    runs = [c.get("replicates", "") for g in rep["groups"] for r in g["rows"] for c in r["cells"].values()]
    if runs and all(str(n).split(" ")[0] == "n=1" for n in runs):
        lines.append("  (one run per ticket and per dense model: every bound, a 'not double-win' one too, covers "
                     "only the test set's sampling; seed-to-seed variance is not measured, --study measures it)")
    for g in rep["groups"]:
        for r in (r for r in g["rows"] if r["sparsity"] > 0):
            call = r.get("call") or ("double-win" if r["double_win"] else "not double-win")
            if r["double_win"]:
                why = "; ".join(f"{name} {c['test']['why']}" for name, c in sorted(r["cells"].items())
                                if c.get("test"))
            else:
                why = r["status"].removeprefix(f"{call}: ")
            lines.append(f"  {g['init']:8s}  {r['family']:8s}  {100 * r['sparsity']:6.2f}%  {call}: {why}")
    return "\n".join(lines)


def best_sa_lines(cfg: DemoConfig, margin: list[str]) -> str:
    """The verdicts of the same runs read at the best-validation-SA checkpoint (the paper's choice), beside the
    demo's own reading: report.py into report-best-sa/, its tables not printed."""
    out = os.path.join(cfg.out, "report-best-sa")
    code = subprocess.call([sys.executable, os.path.join(ROOT, "report.py"), os.path.join(cfg.out, "transfer"),
                            "--out", out, "--checkpoint", "sa", "--no-plots", *margin], cwd=ROOT,
                           stdout=subprocess.DEVNULL)
    if code != 0:
        raise SystemExit(f"the best-SA report failed: python report.py {cfg.out}/transfer --checkpoint sa")
    return verdict_lines(os.path.join(out, "report.json"))


def overlap_summary(cfg: DemoConfig) -> str:
    """Per pre-trained model, each family's mask IoU with that model's trained family (A-IMP, IMP) beside the
    noise floors (its IMP seeds against each other, OMP, random masks), worded as the report words them."""
    import contextlib
    import io

    from lottery.overlap import write_overlap
    from reporting.overlap import read_overlap
    lines = ["mask overlap (IoU of kept weights) within each pre-trained model, beside its noise floors "
             "(docs/VERDICT.md, \"Noise floors\"):"]
    for kind in cfg.kinds:
        root, ref = os.path.join(cfg.out, "transfer", kind), "aimp" if kind == "robust" else "imp"
        with contextlib.redirect_stdout(io.StringIO()):
            write_overlap(root, ref)
        ov = read_overlap(root)
        for s in sorted({p["sparsity"] for p in (*ov.pairs, *ov.replicates)}):
            lines += [f"  {kind:8s}  {f.name:5s}  {100 * s:6.2f}%  {ov.judged(kind, f.name, [s])}"
                      for f in families(cfg) if f.kind == kind]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="where everything goes (default: demo_out/, with --study demo_out/study/)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, pre-training, IMP and transfer")
    p.add_argument("--quick", action="store_true", help="fewer images, epochs and runs (the test suite's demo)")
    p.add_argument("--study", action="store_true",
                   help="robust vs standard pre-training, replicated: A-IMP and IMP tickets at 75%% from 5 IMP "
                        "seeds, each transferred with its own seed and compared with the dense run of that seed; "
                        "dense and OMP with the same 5 seeds; 1000 test images, margin 3 points: 10 IMP stages, "
                        "60 transfer runs")
    a = p.parse_args(argv)
    out = a.out or os.path.join(ROOT, "demo_out", *(["study"] if a.study else []))
    cfg = DemoConfig(out=os.path.abspath(out), seed=a.seed, quick=a.quick, study=a.study)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.path.insert(0, ROOT)
    start = time.time()

    from demo import data as demo_data
    say(f"[1/5] built-in data -> {cfg.out}/data (textures at 32 px; ImageFolder layout)")
    pre, down = demo_data.make_demo_data(os.path.join(cfg.out, "data"), scale=cfg.scale, seed=cfg.seed,
                                             test=cfg.test_per_class)

    say("[2/5] pre-training the small ResNet (stands in for downloaded ImageNet weights, unreachable offline)")
    for kind in cfg.kinds:
        pretrain(cfg, pre, kind, os.path.join(cfg.out, "pretrained", f"{kind}.pth"))

    say("[3/5] finding tickets")
    for fam in families(cfg):
        find_tickets(cfg, fam)
        if "--early-bird" in fam.flags:
            say(early_bird_summary(cfg, fam))

    say("[4/5] transferring the dense model and every ticket (standard and adversarial fine-tuning), "
        "through the campaign tool's local queue")
    spec = transfer_all(cfg)
    say_runs(cfg)

    say("[5/5] the double-win report, and what the tickets cost")
    report_dir = os.path.join(cfg.out, "report")
    env = dict(os.environ, DOUBLEWIN_PY=sys.executable)
    margin = ["--margin", f"{cfg.margin:g}"] if cfg.margin else []
    code = subprocess.call([sys.executable, os.path.join(ROOT, "sweep.py"), "report", spec, "--", "--out",
                            report_dir, "--checkpoint", cfg.checkpoint, *margin], env=env, cwd=ROOT)
    if code != 0:
        raise SystemExit("the report failed (see above)")
    say(verdict_lines(os.path.join(report_dir, "report.json")))
    if cfg.checkpoint != "sa":
        say(best_sa_lines(cfg, margin))
    say(cost_table(cfg))
    if len(cfg.imp_seeds) > 1:
        say(overlap_summary(cfg))
    say(f"\nDone in {time.time() - start:.0f} s. Files: {cfg.out}/")
    say(f"  report: {report_dir}/report.md, report.csv, *.png;  tickets: {cfg.out}/tickets/;  "
        f"runs: {cfg.out}/transfer/<kind>/folder-1/<ticket>/<std|adv>/s<seed>/results.json")
    say(f"The transfer stage was the campaign {spec} (python sweep.py plan|status {spec}).")
    say("Paper scale on a SLURM cluster, the same tool (IMP on ImageNet, then every ticket x dataset x fraction x "
        "mode x seed; see README, \"The campaign\"):")
    say("  python sweep.py run campaign/example.toml --slurm --partition gpu --time 24:00:00 --follow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
