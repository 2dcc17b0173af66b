"""The command blocks of README.md and docs/*.md, read at test time, and how each one runs small here.

A fenced block is one of: shell commands (``bash``/``sh``), a Python snippet (``python``), or, marked by a one-line
comment right before its fence, something the tests do not run as written:

* ``<!-- docs-test: output (COMMAND) -->``: what COMMAND (a line of another block) prints;
* ``<!-- docs-test: skip (REASON) -->``: needs a GPU or a download (REASON says which);
* ``<!-- docs-test: downloads (REASON) -->``: runs, except its download lines (wget, curl, git clone,
  huggingface-cli); the tests provide small stand-ins of what they fetch.

Each command is rewritten to run small: the placeholder paths of :data:`PATHS` become real files (the shared data,
its reference weights, small stand-ins written by the test), and :data:`SMALL` sets small sizes. A path or a
command that no table knows is an error that says what to add.
"""
from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- docs-test: (output|skip|downloads) \((.+)\) -->$")
HOW_TO_MARK = ("put `<!-- docs-test: skip (needs a GPU: ...)  -->` / `skip (downloads ...)`, `downloads (...)` or "
               "`output (COMMAND)` on the line before its fence, or teach tests/docs_commands.py to run it")
#: Placeholder paths of the docs -> what they are here ({data}: the shared data folder; the rest: the test's files).
PATHS = {
    "cifar10_test.npz": "{data}/cifar10_test.npz",
    "cifar100_test.npz": "{data}/cifar100_test.npz",
    "mnist_test.npz": "{data}/mnist_test_32.npz",
    "cifar10_train.npz": "{data}/cifar10_train_10k.npz",
    "cifar10_train_10k.npz": "{data}/cifar10_train_10k.npz",
    "mnist_test_32.npz": "{data}/mnist_test_32.npz",
    "weights/cifar10_resnet18_32x32.pt": "{data}/weights/cifar10_resnet18_32x32.pt",
    "weights/cifar10_cond_unet": "{diffusion}",  # a tiny stand-in (tests/test_docs.py's site fixture)
    "best.ckpt": "{ckpt}",
    "res18_cifar10_disc.ckpt": "{ckpt}",
    "my_cifar10_diffusion": "{diffusion}",
    "/path/to/cifar10_cond_unet": "{diffusion}",
    "models/ddim_cifar10_cond": "{diffusion}",
    "path/to/diffusion_dir": "{diffusion}",
    "./results/cifar10_resnet18_base": "{runs}",
    "./results/cifar10_resnet18_32x32_base_e100_lr0.1_default": "{runs}",
    "<runs>": "{runs}",
    "./results/.../s0/best.ckpt": "{runs}/s0/best.ckpt",
    # the paper's checkpoints and their source configs: small stand-ins in the same formats
    "ddim_cifar10_cond.ckpt": "{sources}/ddim10.ckpt",
    "DiffOOD/config/ddim_cifar10_cond.yml": "{sources}/ddim10.yml",
    "ddim_cifar100_cond.ckpt": "{sources}/ddim100.ckpt",
    "DiffOOD/config/ddim_cifar100_cond.yml": "{sources}/ddim100.yml",
    "<iddpm checkpoint>": "{sources}/iddpm.ckpt",
    "DiffOOD/config/iddpm_cifar10_cond.yml": "{sources}/iddpm.yml",
    "cin256-v2.ckpt": "{sources}/ldm.ckpt",
    "latent-diffusion/configs/latent-diffusion/cin256-v2.yaml": "{sources}/ldm.yaml",
}
#: Small sizes per command: flags set (replacing the doc's value), and flags added only where the doc has none.
SMALL = {
    "eval": ({"--limit": ["12"], "--fit-limit": ["60"]},
             {"--timestep": ["100"], "--stride": ["50"], "--repeats": ["1"], "--no-progress": []}),
    "demo": ({"--limit": ["30"], "--repeats": ["1"]}, {"--no-progress": []}),
    "train": ({"--steps": ["2"], "--batch-size": ["8"], "--block-out-channels": ["16", "32"],
               "--attention-levels": [], "--norm-groups": ["8"], "--checkpoint-every": ["2"],
               "--warmup-steps": ["0"]}, {"--no-progress": []}),
    "convert": ({}, {}),
    "openood.main --root": ({"--num-workers": ["0"]}, {"--data-root": ["./data"], "--config-root": ["./configs"]}),
    "openood.main --config": ({"--num_workers": ["0"]}, {}),
}
#: main.py mode reads the packaged diffood.yml: its cheap settings come as dotted overrides.
CHEAP_DIFFOOD = {"--postprocessor.postprocessor_args.timestep": ["100"],
                 "--postprocessor.postprocessor_args.stride": ["50"],
                 "--postprocessor.postprocessor_args.repeats": ["1"]}
#: Each command's output arguments: left as written (relative to the test's folder).
OUTPUTS = {"eval": ("--out",), "demo": ("--out",), "train": ("-o", "--output"), "convert": ()}
DOWNLOADERS = ("wget", "curl", "huggingface-cli")
PATHLIKE = re.compile(r"/|\.(npz|ckpt|pt|pth|th|yml|yaml|safetensors)$")


class DocsError(AssertionError):
    """A block or command the tests cannot classify or map, with what to do about it."""


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and the marker before it."""

    doc: str
    line: int
    lang: str
    text: str
    marker: Optional[str] = None
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_files(repo: Path) -> List[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def read_blocks(repo: Path) -> List[Block]:
    """Every fenced block of README.md and docs/*.md; a malformed docs-test marker is an error."""
    blocks = []
    for path in doc_files(repo):
        lines, name = path.read_text(encoding="utf-8").splitlines(), str(path.relative_to(repo))
        i = 0
        while i < len(lines):
            if "docs-test" in lines[i] and not (MARKER.match(lines[i]) and FENCE.match(lines[i + 1] if i + 1 <
                                                                                         len(lines) else "")):
                raise DocsError(f"{name}:{i + 1}: malformed docs-test marker {lines[i]!r}; write "
                                "`<!-- docs-test: KIND (REASON) -->` right before a ``` fence")
            fence = FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise DocsError(f"{name}:{i + 1}: unclosed ``` block")
            marker = MARKER.match(lines[i - 1]) if i else None
            blocks.append(Block(name, i + 1, fence.group(1), "\n".join(lines[i + 1:end]),
                                marker.group(1) if marker else None, marker.group(2) if marker else ""))
            i = end + 1
    return blocks


def logical_lines(text: str) -> List[str]:
    """Lines with ``\\`` continuations joined; blank lines dropped."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current = (current + line).strip()
        if current:
            out.append(current)
        current = ""
    return out


def split(line: str) -> List[str]:
    """shlex tokens, with ``<placeholder words>`` kept as one token, comments dropped."""
    return shlex.split(re.sub(r"<[^<>]+>", lambda m: shlex.quote(m.group(0)), line), comments=True)


def command_kind(tokens: List[str]) -> str:
    """What a logical shell line is: ``comment``, ``shell`` (for / done / export), ``make``, ``pip``, ``download``,
    a command of :data:`SMALL`, or ``unknown``."""
    if not tokens:
        return "comment"
    if tokens[0] in ("for", "done", "export"):
        return "shell"
    if tokens[0] in ("make", "pip"):
        return tokens[0]
    if tokens[0] in DOWNLOADERS or tokens[:2] == ["git", "clone"]:
        return "download"
    if tokens[:3] == ["python", "-m", "openood_diffood"] and len(tokens) > 3 and tokens[3] in SMALL:
        return tokens[3]
    if tokens[:3] == ["python", "-m", "openood.main"]:
        return "openood.main --config" if "--config" in tokens else "openood.main --root"
    return "unknown"


def _set_flags(args: List[str], flags: Dict[str, List[str]], replace: bool) -> List[str]:
    """``args`` with each flag of ``flags`` set to its values (``replace``), or added where absent."""
    out = list(args)
    for flag, values in flags.items():
        if flag in out:
            if not replace:
                continue
            i = out.index(flag)
            j = i + 1
            while j < len(out) and not out[j].startswith("-"):
                j += 1
            out[i + 1:j] = values
        else:
            out += [flag, *values]
    return out


def _outputs(kind: str, args: List[str]) -> List[int]:
    """Indexes of the output arguments (convert: its second positional argument)."""
    if kind == "convert":
        positional = [i for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or not
                                                                                   args[i - 1].startswith("--"))]
        return positional[2:3]  # after "convert": checkpoint, out_dir
    return [i + 1 for i, a in enumerate(args) if a in OUTPUTS.get(kind, ()) and i + 1 < len(args)]


def outputs_of(line: str) -> List[str]:
    """The output paths a logical line names (eval/demo --out, train -o, convert's OUT_DIR)."""
    tokens = split(line)
    kind = command_kind(tokens)
    if kind not in OUTPUTS:
        return []
    args = tokens[3:]
    return [args[i] for i in _outputs(kind, args)]


def _map_path(token: str, world: Dict[str, str], cwd: Path, where: str) -> str:
    """A placeholder path -> its real path; any other path must exist in the test's folder."""
    if token.startswith("-") or "$" in token:
        return token
    name, sep, path = token.partition("=")
    if sep and not PATHLIKE.search(name) and name.isidentifier():  # NAME=PATH (--near cifar100=x.npz, export)
        return f"{name}={_map_path(path, world, cwd, where)}"
    mapped = PATHS[token].format(**world) if token in PATHS else token
    if PATHLIKE.search(mapped) and not (cwd / mapped).exists():
        raise DocsError(f"{where}: path {token!r} is not in tests/docs_commands.py PATHS and does not exist in the "
                        "test's folder; add it to PATHS (what it stands for here) or fix the doc")
    return mapped


def rewrite(line: str, world: Dict[str, str], cwd: Path, where: str) -> str:
    """A runnable shell line for one logical line of a block (download lines become comments)."""
    tokens = split(line)
    kind = command_kind(tokens)
    if kind == "comment":
        return ""
    if kind in ("download", "unknown"):
        if kind == "download":
            return f": not run, a download: {shlex.quote(line)}"
        raise DocsError(f"{where}: no docs-test rule runs {line!r}; {HOW_TO_MARK}")
    if kind == "shell":
        head = [tokens[0], *(_map_path(t, world, cwd, where) for t in tokens[1:])] if tokens[0] == "export" \
            else tokens
        return " ".join(t if "$" in t or t.endswith(";") else shlex.quote(t) for t in head)
    if kind == "make":
        return _make(tokens, world, cwd, where)
    if kind == "pip":
        check_pip(tokens, Path(world["repo"]), where)
        return f": checked, not run: {shlex.quote(line)}"
    head, args = (tokens[:4], tokens[4:]) if tokens[2] == "openood_diffood" else (tokens[:3], tokens[3:])
    replaced, added = SMALL[kind]
    args = _set_flags(_set_flags(args, replaced, True), added, False)
    if kind == "openood.main --config" and "diffood" in args:
        args = _set_flags(args, CHEAP_DIFFOOD, False)
    outputs = [i - 1 for i in _outputs(kind, head[3:] + args)]
    for i, arg in enumerate(args):
        if i in outputs:
            if arg.startswith("/") or ".." in Path(arg).parts:
                raise DocsError(f"{where}: output {arg!r} is not a relative path inside the working folder")
        else:
            args[i] = _map_path(arg, world, cwd, where)
    return " ".join(shlex.quote(t) if "$" not in t else t for t in head + args)


def _make(tokens: List[str], world: Dict[str, str], cwd: Path, where: str) -> str:
    """``make demo`` runs its recipe's command small; other targets must exist (``make test`` is this suite)."""
    makefile = (Path(world["repo"]) / "Makefile").read_text(encoding="utf-8")
    target = tokens[1] if len(tokens) == 2 else ""
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M) if target else None
    if recipe is None:
        raise DocsError(f"{where}: `{' '.join(tokens)}` names no target of the Makefile")
    command = recipe.group(1).strip()
    if command.startswith("$(BIN)/python -m openood_diffood "):
        return rewrite(command.replace("$(BIN)/python", "python"), world, cwd, where)
    return f": checked, not run: {shlex.quote(' '.join(tokens))}"


def check_pip(tokens: List[str], repo: Path, where: str) -> None:
    """``pip install`` lines: the package itself (``.``), or versions pinned exactly as the Makefile pins them."""
    makefile = (repo / "Makefile").read_text(encoding="utf-8")
    for name in (t for t in tokens[2:] if not t.startswith("-")):
        if tokens[1] != "install" or (name != "." and name not in makefile.split()):
            raise DocsError(f"{where}: `{' '.join(tokens)}`: {name!r} is not what the Makefile installs; make the "
                            "docs and the Makefile agree")


def shell_script(block: Block, world: Dict[str, str], cwd: Path) -> str:
    """The block as a bash script that runs small here."""
    lines = logical_lines(block.text)
    kinds = [command_kind(split(line)) for line in lines]
    if "download" in kinds and block.marker != "downloads":
        raise DocsError(f"{block.where}: the block downloads ({lines[kinds.index('download')]!r}); mark it "
                        "`<!-- docs-test: downloads (what) -->` or `skip (downloads ...)`")
    body = [rewrite(line, world, cwd, f"{block.where}") for line in lines]
    return "set -euo pipefail\n" + "\n".join(line for line in body if line) + "\n"


#: Python snippets: placeholder text -> what it is here (``NET``, ``X``: bound by :func:`python_script`'s preamble).
PY_REWRITES = {
    r"^net = \.\.\.": "net = NET",
    r"\.cuda\(\)": "",  # this machine has no GPU: the net stays on the CPU (OpenOOD's own calls are the hook's job)
}


def python_script(block: Block, world: Dict[str, str], cwd: Path) -> str:
    """The snippet with its placeholders bound: ``net`` (OpenOOD's ResNet18_32x32 with the shared CIFAR-10
    weights), ``x`` (two normalized CIFAR-10 test images), paths through :data:`PATHS`."""
    text = block.text
    for pattern, repl in PY_REWRITES.items():
        text = re.sub(pattern, repl, text, flags=re.M)
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            raise DocsError(f"{block.where}: the snippet keeps a `...` placeholder (line {node.lineno}); bind it in "
                            "tests/docs_commands.py PY_REWRITES")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PATHS:
            text = text.replace(repr(node.value), repr(PATHS[node.value].format(**world)))
            text = text.replace(f'"{node.value}"', repr(PATHS[node.value].format(**world)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and PATHLIKE.search(node.value) and \
                not (cwd / node.value).exists():
            raise DocsError(f"{block.where}: path {node.value!r} is not in tests/docs_commands.py PATHS and does not "
                            "exist in the test's folder; add it to PATHS or fix the doc")
    preamble = (
        "import numpy as _np, torch as _torch\n"
        "from openood_diffood.models.classifiers import load_classifier as _load\n"
        "from openood_diffood.method.normalization import DATASET_STATS as _STATS\n"
        f"NET = net = _load('resnet18_32x32', {world['ckpt']!r}).eval()\n"
        f"with _np.load({world['data'] + '/cifar10_test.npz'!r}) as _f:\n"
        "    _x = _torch.from_numpy(_f['images'][::5000]).permute(0, 3, 1, 2).float() / 255\n"
        "_m, _s = (_torch.tensor(v).view(1, 3, 1, 1) for v in _STATS['cifar10'])\n"
        "x = (_x - _m) / _s\n")
    return preamble + text + "\nprint('docs-test: snippet finished')\n"
