"""What the campaign asks SLURM, and how it reads the answers: this user's live jobs and their comments (squeue),
the cluster's MaxArraySize and host lists (scontrol, sinfo), how dead jobs ended (sacct), and what an sbatch
refusal is about. A question SLURM
does not answer is a `SchedulerError`, never an empty answer: an unknown queue must not read as an empty one."""
from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass

from infra.errors import UserError

ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
         "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
# how a job can end that the run's own launch.json may never say (the whole job OOM-killed, its node dead) and
# that submitit does not requeue (TIMEOUT and PREEMPTED it does: those are not failures)
FAILURES = {"OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "DEADLINE", "BOOT_FAIL"}
NODE_FAULTS = {"NODE_FAIL", "BOOT_FAIL"}  # the node, not the run: retried elsewhere like an exit 3
# sbatch's refusals because of how many jobs this user has, not what was asked: the rest waits, nothing is wrong
LIMITS = ("QOSMaxSubmitJobPerUserLimit", "AssocMaxSubmitJobLimit", "QOSMaxSubmitJobPerUser", "MaxSubmitJobs",
          "Job violates accounting/QOS policy", "Resource temporarily unavailable",
          "Slurm temporarily unable to accept job")
# sbatch's refusal texts -> what the user should change (the text is matched whole, never a stray word in it)
HINTS = (("Invalid partition name specified", "--partition"),
         ("Invalid account or account/partition combination specified", "--account"),
         ("Invalid account", "--account"),
         ("Invalid qos specification", "--qos"),
         ("Requested time limit is invalid", "--time"),
         ("Invalid generic resource (gres) specification", "--gpus-per-run"),
         ("Memory required by task is not available", "the memory asked (--sbatch mem=...)"),
         ("Requested node configuration is not available",
          "the CPUs, GPUs and memory asked together (--cpus-per-run, --gpus-per-run, --sbatch mem=...): "
          "no node has them all"),
         ("More processors requested than permitted", "--cpus-per-run"),
         ("Invalid feature specification", "--sbatch constraint=..."),
         ("Invalid job array specification", "the cluster's MaxArraySize"),
         ("Node count specification invalid", "the SLURM options"))
# sbatch's and scontrol's words for a controller too busy to answer (or restarting): nothing was refused, the
# question is asked again at the next poll (a job it accepted before the answer was lost carries our comment)
BUSY = ("Socket timed out on send/recv operation", "Unable to contact slurm controller",
        "Zero Bytes were transmitted or received", "Slurm backup controller in standby mode",
        "Communication connection failure")
TIMEOUT_S = 60


class SchedulerError(UserError):
    """SLURM could not be asked (squeue missing, failing or timing out): nothing is decided on a guess."""

    exit_status = 3


@dataclass(frozen=True)
class Ended:
    """How sacct says a job ended: its state (first word), who cancelled it, its node."""
    state: str
    node: str = ""
    by: str = ""

    def reason(self) -> str:
        return self.state + (f" by uid {self.by}" if self.by else "")


def user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _ask(cmd: list[str], what: str) -> str:
    """stdout of a SLURM query, or SchedulerError saying in one line why SLURM could not be asked."""
    if not shutil.which(cmd[0]):
        raise SchedulerError(f"{cmd[0]} not found: cannot ask SLURM {what}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{cmd[0]} did not answer in {TIMEOUT_S} s: cannot ask SLURM {what}") from None
    except OSError as e:
        raise SchedulerError(f"{cmd[0]}: {e}: cannot ask SLURM {what}") from None
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        raise SchedulerError(f"{cmd[0]} failed ({said}): cannot ask SLURM {what}")
    return out.stdout


def expand(job: str) -> list[str]:
    """One squeue/sacct job id -> the ids it stands for: 12_[0-3,7%2] -> 12_0 .. 12_3, 12_7."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job)
    if not m:
        return [job]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_alive(text: str) -> set[str]:
    """`squeue -h -r -o "%i %T"` -> the ids of live jobs (array elements one by one)."""
    alive: set[str] = set()
    for line in text.splitlines():
        p = line.split()
        if len(p) == 2 and p[1] in ALIVE:
            alive.update(expand(p[0]))
    return alive


def parse_queue(text: str) -> dict[str, str]:
    """`squeue -h -r -o "%i|%T|%k"` -> live job id (array elements one by one) -> its comment ("" for none)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        p = line.strip().split("|", 2)
        if len(p) >= 2 and p[1] in ALIVE:
            comment = p[2].strip() if len(p) == 3 and p[2].strip() != "(null)" else ""
            out.update(dict.fromkeys(expand(p[0]), comment))
    return out


def queue() -> dict[str, str]:
    """This user's jobs SLURM still holds, with their comments, asked once; SchedulerError when squeue cannot say."""
    return parse_queue(_ask(["squeue", "-h", "-r", "-u", user(), "-o", "%i|%T|%k"], "which jobs are queued"))


def alive_jobs() -> set[str]:
    """This user's jobs SLURM still holds, asked once; SchedulerError when squeue cannot say."""
    return set(queue())


def expand_hostlist(nodelist: str) -> list[str]:
    """A SLURM host list without asking SLURM: "gpu[07-08],rack[1-2]-n[1,3]" -> gpu07, gpu08, rack1-n1,
    rack1-n3, rack2-n1, rack2-n3 (each bracket expanded in turn, leading zeros kept)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist + ","):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            names.append(nodelist[start:i].strip())
            start = i + 1
    out: list[str] = []
    for name in filter(None, names):
        m = re.search(r"\[([^\]]*)\]", name)
        if not m:
            out.append(name)
            continue
        for part in m.group(1).split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                out += expand_hostlist(name[:m.start()] + str(i).zfill(len(lo)) + name[m.end():])
    return out


def hostnames(nodelist: str) -> list[str]:
    """A SLURM host list's hosts, as `scontrol show hostnames` says, else expanded here."""
    try:
        return _ask(["scontrol", "show", "hostnames", nodelist], "a host list").split()
    except SchedulerError:
        return expand_hostlist(nodelist)


def partition_nodes(partition: str | None) -> list[str] | None:
    """The hosts of `partition` (None: the default one, marked * by sinfo); None when sinfo cannot say."""
    try:
        text = _ask(["sinfo", "-h", "-o", "%P|%N"], "its partitions")
    except SchedulerError:
        return None
    lists = []
    for line in text.splitlines():
        name, _, nodes = line.strip().partition("|")
        default = name.endswith("*")
        if nodes and (name.rstrip("*") == partition if partition else default):
            lists.append(nodes)
    return sorted({h for nodes in lists for h in hostnames(nodes)}) or None


def parse_max_array_size(text: str) -> int | None:
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else None


@functools.lru_cache(maxsize=1)
def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices 0..MaxArraySize-1), asked once per invocation; SLURM's default
    1001 when the config does not say."""
    size = parse_max_array_size(_ask(["scontrol", "show", "config"], "its MaxArraySize"))
    return size if size and size > 0 else 1001


def parse_sacct(text: str) -> dict[str, Ended]:
    """`sacct -n -P -X -o JobID,State,NodeList` -> job id -> how it ended (the newest record of a requeued job)."""
    out: dict[str, Ended] = {}
    for line in text.splitlines():
        p = line.strip().split("|")
        if len(p) < 3 or not p[1]:
            continue
        words = p[1].split()
        by = words[2] if len(words) >= 3 and words[1] == "by" else ""
        node = "" if p[2] in ("None assigned", "") else p[2]
        for job in expand(p[0]):
            out[job] = Ended(words[0].rstrip("+"), node, by)
    return out


def ended_jobs(jobs: list[str]) -> dict[str, Ended] | None:
    """How the given jobs ended, from accounting; None where the cluster keeps none (no slurmdbd) or sacct
    cannot be asked: then a run's launch.json is all there is."""
    if not jobs:
        return {}
    try:
        text = _ask(["sacct", "-n", "-P", "-X", "-j", ",".join(sorted(set(jobs))), "-o", "JobID,State,NodeList"],
                    "how jobs ended")
    except SchedulerError:
        return None
    return parse_sacct(text)


def is_busy(text: str) -> bool:
    """Whether SLURM's answer says its controller did not answer (ask again later), not that it refused."""
    return any(s.lower() in text.lower() for s in BUSY)


def is_limit(text: str) -> bool:
    """Whether sbatch refused because of this user's submit limits (try again later), not what was asked."""
    return any(s.lower() in text.lower() for s in LIMITS)


def limit_name(text: str) -> str:
    """The submit limit sbatch named (QOSMaxSubmitJobPerUserLimit, ...), else its first limit wording found."""
    return next((s for s in LIMITS if s.lower() in text.lower()), "a submit limit")


def refusal(text: str) -> tuple[str, str]:
    """sbatch's error text -> (its one line, what to change)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = next((ln for ln in reversed(lines) if "submission failed" in ln.lower()),
                next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "no message"))
    said = re.sub(r"^sbatch: error: ", "", said)
    option = next((o for text_, o in HINTS if text_.lower() in said.lower()), "the SLURM options")
    return said, option
