"""Every command the READMEs document composes, and the top README's per-paper promises hold.

READMEs: `README.md` at the top, `<pkg>/README.md` for every package with a `conf/` directory
(a paper added later is picked up when its README lands) and the kernels' READMEs under
`common/`. Commands: every line of a shell code block (lines continued with a backslash are
joined; `;`, `&&`, `|` split a line into commands) and every inline code span of the prose
that starts with a program checked here. Placeholders (`<date-time>`, `runs=...`) are replaced
from `PLACEHOLDERS`; an unknown one fails.

How each command is checked, in this process (no training, no subprocess per command):
- `python -m <module>` / `torchrun ... -m <module>` where the module's `@hydra.main` names a
  config: the overrides are composed with Hydra's compose API as the CLI composes them. With
  `-m` the sweep is expanded into its jobs the way Hydra's BasicSweeper does (the config's
  `hydra.sweeper.params` with the command line's overrides on top, `split_arguments`); every
  job's config must resolve fully, its run (or sweep job) directory must lie under `runs/`,
  and it must pass the module's `validate(cfg)` where the module defines one (training and
  collection stages; the `eval` modules have none and are composed and resolved only).
- other `python -m <module>` (argparse benchmarks): every `--option` of the command must be one
  the module's parser defines (read from its source).
- `pytest ...` / `python -m pytest`: the test paths exist. `make <target>`: the target exists.
- `export`, `pip`, `tensorboard`: not checked (`NOT_CHECKED` says why); any other program fails.

A job's group choices (`task=`, `model=`, ...) are composed once and its value overrides applied
on a copy, as Hydra's config loader applies them after composition; this keeps the few hundred
sweep jobs of the paper tiers within seconds.
"""

from __future__ import annotations

import ast
import copy
import importlib
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

ROOT = Path(__file__).parents[1]

# Placeholders of the READMEs and what a user would type for them. A `<...>` that is not listed
# fails the test: add it here with a value that composes.
PLACEHOLDERS = {
    "<date-time>": "2026-01-01_00-00-00",  # the timestamp of a Hydra run or sweep directory
    "<date>": "2026-01-01_00-00-00",
    "<sweep>": "runs/example/multirun/2026-01-01_00-00-00",  # a sweep directory
    "<run dir>": "runs/example/run",  # a run directory
    "<dir>": "runs/example",  # a run or sweep directory
    "<that dir>": "runs/example/data",  # the directory the command before it wrote
    "<collect dir>": "runs/example/data",  # a directory written by algo_distill.collect
    "<id>": "Hopper-v4",  # a gymnasium environment id (gmom_ppo)
    "<same overrides>": "",  # the overrides of the run that is resumed
    "<kernel>": "attention",  # one of common/kernels/ (bench/ has a module of the same name)
    "<name>": "attention",  # any module of bench/
    "<paper>": "causal_seq",  # any paper: the top README's generic commands hold for each
    "<stage>": "train",  # any stage of that paper
}
ELLIPSIS_VALUE = "runs/example"  # `key=...` (a directory) in the READMEs' file tables

# Overrides whose value is the output of an earlier documented stage, which this test does not
# run: the value is replaced by a stub directory holding the file that stage writes (what the
# paper's validate checks for).
STAGE_OUTPUTS = {
    ("algo_distill.train", "dataset"): "manifest.json",
    ("gato.train", "dataset"): "manifest.json",
    ("gato.eval", "run"): "best.pt",
}

NOT_CHECKED = {
    "export": "sets an environment variable for the commands after it",
    "pip": "installs packages",
    "tensorboard": "a viewer outside the project",
}
CHECKED_PROGRAMS = re.compile(r"(.*/)?(python(3[.\d]*)?|torchrun|make|pytest)")
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "zsh"}  # every line is a command
# A fence without a language may hold anything (the layout block): only its lines that start
# with a checked program are commands, as for inline spans.
PYTEST_OPTIONS_WITH_VALUE = {"-m", "-k", "-n", "-p", "-c", "--maxfail", "--durations"}
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class CommandError(Exception):
    """A documented command that would not run as written."""


@dataclass(frozen=True)
class Command:
    readme: Path
    line: int
    text: str
    inline: bool = False  # an inline code span of the prose (not a code block's line)

    def where(self) -> str:
        path = self.readme.relative_to(ROOT) if self.readme.is_relative_to(ROOT) else self.readme
        return f"{path}:{self.line}"


def discover_readmes() -> list[Path]:
    """The top README, every package-with-conf/'s README, the READMEs under common/."""
    packages = sorted(p for p in ROOT.iterdir() if (p / "conf").is_dir())
    found = [ROOT / "README.md", *(p / "README.md" for p in packages)]
    found += sorted((ROOT / "common").rglob("README.md"))
    return [p for p in found if p.is_file()]


def papers() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "conf").is_dir())


# ---------------------------------------------------------------- extraction


def extract_commands(readme: Path) -> list[Command]:
    """Shell-block lines and command-like inline code spans, with the line each starts on."""
    lines = readme.read_text().splitlines()
    commands: list[Command] = []
    prose = list(lines)
    fence: str | None = None
    language = ""
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        opening = re.match(r"(```+|~~~+)\s*([\w+-]*)", stripped)
        if fence is None and opening:
            fence, language = opening.group(1), opening.group(2).lower()
            prose[i] = ""
        elif fence is not None:
            prose[i] = ""
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
            elif (language in SHELL_BLOCKS or language == "") and stripped:
                start, text = i + 1, stripped
                while text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    prose[i] = ""
                    text = text[:-1].rstrip() + " " + lines[i].strip()
                if language or _is_checked(text):
                    commands.append(Command(readme, start, text))
        i += 1
    # Inline spans live in paragraphs (table rows included); a span may wrap across lines.
    paragraph: list[tuple[int, str]] = []
    for number, line in [*enumerate(prose, 1), (len(prose) + 1, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            text = "\n".join(part for _, part in paragraph)
            for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
                span = " ".join(match.group(1).replace("\\|", "|").split())
                if _is_checked(span):
                    line_no = paragraph[0][0] + text.count("\n", 0, match.start())
                    commands.append(Command(readme, line_no, span, inline=True))
        paragraph = []
    return sorted(commands, key=lambda c: c.line)


def _is_checked(text: str) -> bool:
    program = _program(text.split())
    return program is not None and CHECKED_PROGRAMS.fullmatch(program) is not None


def _program(words: list[str]) -> str | None:
    """The program of a command line, after leading NAME=value assignments."""
    for word in words:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", word):
            return word
    return None


def substitute(text: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    text = re.sub(r"=\.\.\.(?=\s|$)", "=" + ELLIPSIS_VALUE, text)
    unknown = re.findall(r"<[^<>\s=][^<>=]*>", text)
    if unknown:
        raise CommandError(
            f"unknown placeholder(s) {unknown}: add them to PLACEHOLDERS in {__file__}"
        )
    return text


def simple_commands(text: str) -> list[list[str]]:
    """Split a shell line into commands (`;`, `&&`, `||`, `|`, `&`) and words, comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


# ---------------------------------------------------------------- module sources


def module_file(module: str) -> Path:
    base = ROOT / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__main__.py"):
        if path.is_file():
            return path
    raise CommandError(f"no module {module!r} in the repository")


def hydra_main(path: Path) -> tuple[str, str] | None:
    """(config_path, config_name) of the module's @hydra.main, or None."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr == "main"
                and isinstance(decorator.func.value, ast.Name)
                and decorator.func.value.id == "hydra"
            ):
                kwargs = {k.arg: ast.literal_eval(k.value) for k in decorator.keywords}
                return kwargs["config_path"], kwargs["config_name"]
    return None


def argparse_options(path: Path) -> set[str] | None:
    """Option strings of the module's `add_argument` calls (None: it has no parser)."""
    options: set[str] | None = None
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            options = (options or {"-h", "--help"}) | {
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and str(a.value)[:1] == "-"
            }
    return options


def defines_validate(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == "validate" for n in tree.body)


# ---------------------------------------------------------------- composition

DIR_OVERRIDES = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


@dataclass
class Composition:
    """One compose() of a config with some group choices, with and without its hydra node."""

    full: DictConfig
    job: DictConfig
    dirs: dict[str, str]  # hydra.run.dir, hydra.sweep.dir, hydra.sweep.subdir, unresolved


_COMPOSITIONS: dict[tuple, Composition] = {}


def composition(config_dir: Path, config_name: str, groups: tuple[str, ...]) -> Composition:
    """compose(config_name, groups), cached: the same group choices recur across sweep jobs.

    Choices of distinct groups do not depend on their order, so the cache key sorts them.
    """
    names = [g.split("=", 1)[0] for g in groups]
    key = (
        str(config_dir),
        config_name,
        tuple(sorted(groups)) if len(set(names)) == len(names) else groups,
    )
    if key not in _COMPOSITIONS:
        full = compose(config_name, list(groups), return_hydra_config=True)
        job = copy.deepcopy(full)
        with open_dict(job):
            del job["hydra"]
        hydra = OmegaConf.to_container(full.hydra, resolve=False)
        dirs = {"hydra.run.dir": hydra["run"]["dir"], "hydra.sweep.dir": hydra["sweep"]["dir"]}
        dirs["hydra.sweep.subdir"] = hydra["sweep"]["subdir"]
        _COMPOSITIONS[key] = Composition(full, job, dirs)
    return _COMPOSITIONS[key]


@dataclass
class Job:
    overrides: list[str]
    cfg: DictConfig  # the task config (no hydra node), as the job's function receives it
    output_dir: str  # where Hydra would put it, unresolved


def expand_jobs(
    config_dir: Path, config_name: str, overrides: list[str], multirun: bool
) -> Iterator[Job]:
    """The jobs the command would run (one without -m), as Hydra's launcher would compose them.

    Hydra composes every job from scratch: its group choices select the config files, then its
    value overrides are applied to the composed config (ConfigLoaderImpl). Here a job's group
    choices are composed once (cached) and its value overrides applied on a copy.
    """
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    parsed = parser.parse_overrides(overrides)

    def is_group(override: Override) -> bool:
        key = override.key_or_group
        return key.startswith("hydra/") or (config_dir / key).is_dir()

    hydra_groups = tuple(o.input_line for o in parsed if o.is_hydra_override() and is_group(o))
    hydra_values = [o for o in parsed if o.is_hydra_override() and not is_group(o)]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    fixed = [o for o in parsed if not o.is_hydra_override() and not o.is_sweep_override()]
    master = composition(
        config_dir, config_name, hydra_groups + tuple(o.input_line for o in fixed if is_group(o))
    )
    if [o for o in hydra_values if o.key_or_group not in DIR_OVERRIDES]:
        checked = copy.deepcopy(master.full)  # other hydra overrides must apply too
        OmegaConf.set_readonly(checked.hydra, False)
        ConfigLoaderImpl._apply_overrides_to_config(hydra_values, checked)
        sweeper = checked.hydra.sweeper
    else:
        sweeper = master.full.hydra.sweeper
    if multirun:
        if sweeper._target_ != BASIC_SWEEPER:
            raise CommandError(f"sweeper {sweeper._target_} is not expanded by this test")
        params = [f"{k}={v}" for k, v in (sweeper.params or {}).items()]
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)[0]
    else:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise CommandError(f"sweep value(s) {sweeps} without -m (Hydra: ambiguous value)")
        jobs = [task]
    current = None
    for number, job in enumerate(jobs):
        job_parsed = parser.parse_overrides(job)
        groups = hydra_groups + tuple(o.input_line for o in job_parsed if is_group(o))
        base = composition(config_dir, config_name, groups)
        cfg = copy.deepcopy(base.job)
        ConfigLoaderImpl._apply_overrides_to_config([o for o in job_parsed if not is_group(o)], cfg)
        dirs = {**base.dirs, **{o.key_or_group: str(o.value()) for o in hydra_values}}
        if multirun:
            output = f"{dirs['hydra.sweep.dir']}/{dirs['hydra.sweep.subdir']}"
        else:
            output = dirs["hydra.run.dir"]
        for key in ("${hydra.job.num}", "${hydra:job.num}"):
            output = output.replace(key, str(number))
        if base is not current:  # for ${hydra:...} in the task config
            HydraConfig.instance().set_config(base.full)
            current = base
        yield Job(job, cfg, output)


def check_job(job: Job, validate: Callable | None) -> None:
    """Resolve the job's config and output directory, check where it writes, validate it."""
    cfg = job.cfg
    with open_dict(cfg):
        cfg["_output_dir"] = job.output_dir  # resolved against the job's own keys
        output = Path(str(cfg["_output_dir"]))
        del cfg["_output_dir"]
    if output.is_absolute() or output.parts[0] != "runs" or ".." in output.parts:
        raise CommandError(f"writes to {output}, outside runs/")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if validate is not None:
        validate(cfg)


# ---------------------------------------------------------------- checking


_CHECKED: dict[tuple[str, tuple[str, ...]], Exception | None] = {}


class ReadmeChecker:
    def __init__(self, stub_root: Path) -> None:
        self.stub_root = stub_root

    def check_readme(self, readme: Path) -> list[str]:
        return [error for command in extract_commands(readme) for error in self.check(command)]

    def check(self, command: Command) -> list[str]:
        try:
            words = substitute(command.text).split()
            if command.inline and len(words) == 3 and words[1] == "-m":
                module_file(words[2])  # `python -m <module>` in prose names it, no arguments
                return []
            for words in simple_commands(substitute(command.text)):
                self.check_simple(words)
        except Exception as error:  # every failure is reported with the README's file:line
            message = f"{type(error).__name__}: {error}".replace("\n", "\n    ")
            return [f"{command.where()}: `{command.text}`\n    {message}"]
        return []

    def check_simple(self, words: list[str]) -> None:
        program = _program(words)
        if program is None:
            return
        args = words[words.index(program) + 1 :]
        name = Path(program).name
        if name in NOT_CHECKED:
            return
        if name == "make":
            self.check_make(args)
        elif name == "pytest":
            self.check_pytest(args)
        elif name == "torchrun":
            if "-m" not in args:
                raise CommandError("torchrun without -m <module>")
            at = args.index("-m")
            self.check_module(args[at + 1], args[at + 2 :])
        elif re.fullmatch(r"python(3[.\d]*)?", name):
            if len(args) < 2 or args[0] != "-m":
                raise CommandError("expected `python -m <module> ...`")
            self.check_module(args[1], args[2:])
        else:
            raise CommandError(
                f"{program!r} is not checked: check it here or add it to NOT_CHECKED"
            )

    def check_make(self, targets: list[str]) -> None:
        makefile = (ROOT / "Makefile").read_text()
        known = set(re.findall(r"^([\w.-]+)\s*:(?!=)", makefile, flags=re.M))
        unknown = [t for t in targets if not t.startswith("-") and "=" not in t and t not in known]
        if unknown:
            raise CommandError(f"no Makefile target {unknown}; targets: {sorted(known)}")

    def check_pytest(self, args: list[str]) -> None:
        skip = False
        for arg in args:
            if skip:
                skip = False
            elif arg in PYTEST_OPTIONS_WITH_VALUE:
                skip = True
            elif not arg.startswith("-") and not (ROOT / arg.split("::")[0]).exists():
                raise CommandError(f"test path {arg} does not exist")

    def check_module(self, module: str, args: list[str]) -> None:
        """A command repeated in the READMEs (a results block and its Reproduce block) is
        checked once; its outcome is remembered."""
        key = (module, tuple(args))
        if key not in _CHECKED:
            try:
                self._check_module(module, args)
                _CHECKED[key] = None
            except Exception as error:
                _CHECKED[key] = error
        if _CHECKED[key] is not None:
            raise _CHECKED[key]

    def _check_module(self, module: str, args: list[str]) -> None:
        if module == "pytest":
            return self.check_pytest(args)
        path = module_file(module)
        main = hydra_main(path)
        if main is None:
            options = argparse_options(path)
            flags = [a.split("=")[0] for a in args if a.startswith("-")]
            if options is None and args:
                raise CommandError(f"{module} takes no arguments (not a Hydra app, no parser)")
            unknown = [f for f in flags if f not in (options or set())]
            if unknown:
                raise CommandError(f"{module} has no option {unknown}; it has {sorted(options)}")
            return
        multirun = any(a in ("-m", "--multirun") for a in args)
        flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
        if flags:
            raise CommandError(f"Hydra flag(s) {flags} are not checked by this test")
        overrides = [self.stage_stub(module, a) for a in args if not a.startswith("-")]
        validate = None
        if defines_validate(path):
            validate = importlib.import_module(module).validate
        config_dir = (path.parent / main[0]).resolve()
        previous = HydraConfig.instance().cfg
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                for job in expand_jobs(config_dir, main[1], overrides, multirun):
                    try:
                        check_job(job, validate)
                    except Exception as error:
                        where = f" (sweep job {' '.join(job.overrides)})" if multirun else ""
                        raise CommandError(f"{type(error).__name__}: {error}{where}") from error
        finally:
            HydraConfig.instance().cfg = previous

    def stage_stub(self, module: str, override: str) -> str:
        key, sep, _ = override.partition("=")
        output = STAGE_OUTPUTS.get((module, key.lstrip("+~")))
        if not sep or output is None:
            return override
        stub = self.stub_root / module / key.lstrip("+~")
        stub.mkdir(parents=True, exist_ok=True)
        (stub / output).write_text("{}")
        return f"{key}={stub}"


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("readme", discover_readmes(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_composes(readme, tmp_path):
    commands = extract_commands(readme)
    errors = ReadmeChecker(tmp_path).check_readme(readme)
    assert not errors, f"{len(errors)} of {len(commands)} commands fail:\n" + "\n".join(errors)


GOOD = "python -m gmom_ppo.train experiment=smoke"
BROKEN = {
    "unknown config option": ("python -m gmom_ppo.train experiment=nope", "experiment/nope"),
    "unknown key": ("python -m gmom_ppo.train ppo.gama=0.9", "ppo.gama"),
    "a sweep job fails validate": (
        "python -m gmom_ppo.train -m ppo.gamma=0.9,1.5",
        "ppo.gamma=1.5 is not valid: a float in (0, 1] (sweep job ppo.gamma=1.5)",
    ),
    "a tier's sweep job fails validate": (
        "python -m gmom_ppo.train -m experiment=small total_steps=0",
        "total_steps=0 is not valid",
    ),
    "a sweep without -m": ("python -m gmom_ppo.train seed=1,2", "without -m"),
    "a missing mandatory value": ("python -m gmom_ppo.eval", "runs"),
    "a stage's input not given": (
        "python -m algo_distill.train experiment=small",
        "dataset=None is not valid",
    ),
    "unknown placeholder": ("python -m gmom_ppo.train env.id=<env>", "unknown placeholder"),
    "unknown module": ("python -m gmom_ppo.training", "no module 'gmom_ppo.training'"),
    "unknown bench option": ("python -m bench.gmom_ppo --step 20480", "['--step']"),
    "outside runs/": ("python -m gmom_ppo.train hydra.run.dir=/tmp/elsewhere", "outside runs/"),
    "unknown make target": ("make demos", "no Makefile target ['demos']"),
    "missing test path": ("pytest -q tests/no_such_dir", "tests/no_such_dir"),
    "unknown program": ("gmom_ppo-train experiment=smoke", "is not checked"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_command_fails_with_its_file_and_line(case, tmp_path):
    command, expected = BROKEN[case]
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nText.\n\n```bash\n{GOOD}  # fine\n{command}\n```\n")
    errors = ReadmeChecker(tmp_path / "stubs").check_readme(readme)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{readme}:7: `{command}`"), errors[0]
    assert expected in errors[0], errors[0]


def test_continued_lines_and_inline_spans_are_checked_with_their_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# t\n\n"
        "```bash\n"
        "export OMP_NUM_THREADS=1\n"
        "OMP_NUM_THREADS=1 python -m gmom_ppo.train -m experiment=smoke \\\n"
        "    algo=ppo,gmom seed=1,2 hydra.sweep.dir=runs/gmom_ppo/x   # 4 jobs\n"
        "python -m gmom_ppo.train experiment=smoke \\\n"
        "    ppo.gamma=2.0\n"
        "```\n\n"
        "| what | command |\n|---|---|\n"
        "| broken | `python -m gmom_ppo.train algo=nope` |\n\n"
        "A run (`python -m gmom_ppo.train experiment=smoke\n"
        "ppo.lr=-1`) wraps.\n"
        "```python\npython -m not.checked  # a python block is not a shell\n```\n"
    )
    commands = extract_commands(readme)
    assert [c.line for c in commands] == [4, 5, 7, 13, 15]
    assert commands[1].text.endswith("hydra.sweep.dir=runs/gmom_ppo/x   # 4 jobs")
    errors = ReadmeChecker(tmp_path / "stubs").check_readme(readme)
    assert [e.split(": ", 1)[0] for e in errors] == [f"{readme}:{n}" for n in (7, 13, 15)]
    assert "ppo.gamma=2.0 is not valid" in errors[0] and "algo/nope" in errors[1]
    assert "ppo.lr=-1 is not valid" in errors[2]


def test_a_sweep_expands_like_hydras_basic_sweeper():
    """The tier's sweeper params, with a command-line value replacing one of them."""
    conf = ROOT / "gmom_ppo" / "conf"
    overrides = ["experiment=small", "algo=gmom", "seed=1,2", "hydra.sweep.dir=runs/gmom_ppo/x"]
    previous = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            jobs = list(expand_jobs(conf, "train", overrides, True))
    finally:
        HydraConfig.instance().cfg = previous
    assert [job.overrides for job in jobs] == [
        ["seed=1", "algo=gmom", "experiment=small"],
        ["seed=2", "algo=gmom", "experiment=small"],
    ]
    assert [(job.cfg.seed, job.cfg.algo.name, job.cfg.total_steps) for job in jobs] == [
        (1, "gmom", 198656),
        (2, "gmom", 198656),
    ]
    assert {job.output_dir for job in jobs} == {
        "runs/gmom_ppo/x/${env.id}-${algo.label}-seed${seed}"
    }


# ------------------------------------------------ the top README's per-paper promises


def _promises() -> dict[str, dict[str, str]]:
    """Rows of the top README's "What differs per paper" table, by paper."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("What differs per paper") :].split("\n\n")[1].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in r.strip("|").split("|")), strict=True))
        for r in table[2:]
    ]
    return {row["paper"]: row for row in rows}


def _pattern(value: str) -> str:
    """A config's directory as the README writes it: ${now:...} -> <date-time>, ${x} -> <x>."""
    value = re.sub(r"\$\{now:[^}]*\}", "<date-time>", value)
    return re.sub(r"\$\{([^}:]+)\}", r"<\1>", value)


def _default(paper: str, config_name: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / paper / "conf"), version_base="1.3"):
        return compose(config_name, [], return_hydra_config=True)


LANDED = [p for p in papers() if (ROOT / p / "README.md").is_file()]
NOT_LANDED = [p for p in papers() if p not in LANDED]


@pytest.mark.parametrize("paper", papers())
def test_every_paper_has_the_layout_entry_points_and_tiers(paper):
    if paper in NOT_LANDED:
        pytest.skip(f"{paper}/ has no README.md yet (being built): the README's rules apply then")
    package = ROOT / paper
    needed = ["train.py", "eval.py", "conf/train.yaml", "conf/eval.yaml"]
    needed += [f"conf/experiment/{tier}.yaml" for tier in ("smoke", "small", "paper")]
    assert [n for n in needed if not (package / n).is_file()] == []
    assert hydra_main(package / "train.py") == ("conf", "train")
    assert hydra_main(package / "eval.py") == ("conf", "eval")
    documented = {
        words[words.index("-m") + 1]
        for c in extract_commands(package / "README.md")
        for words in simple_commands(substitute(c.text))
        if "-m" in words
    }
    assert {f"{paper}.train", f"{paper}.eval"} <= documented


@pytest.mark.parametrize("paper", papers())
def test_the_top_readme_states_each_papers_stages_device_resume_and_directories(paper):
    if paper in NOT_LANDED:
        pytest.skip(f"{paper}/ has no README.md yet (being built): the README's rules apply then")
    row = _promises().get(paper)
    assert row is not None, f"README.md's 'What differs per paper' table has no row for {paper}"
    stages = sorted(p.stem for p in (ROOT / paper).glob("*.py") if hydra_main(p))
    for stage in stages:
        assert re.search(rf"\b{stage}\b", row["stages (`python -m <paper>.<stage>`)"]), stage
    train = _default(paper, "train")
    assert train.device == "auto" and row["`device` of train"] == "`auto`"
    assert row["a resumed run"], "say what a resumed run ends with"
    hydra_dirs = OmegaConf.to_container(train.hydra, resolve=False)
    assert f"`{_pattern(hydra_dirs['run']['dir'])}/`" in row["run directory"]
    sweep = (
        f"`{_pattern(hydra_dirs['sweep']['dir'])}/` / `{_pattern(hydra_dirs['sweep']['subdir'])}`"
    )
    assert sweep == row["sweep directory / job"]
    for stage in stages:
        if stage in ("train", "eval"):
            continue
        name = hydra_main(ROOT / paper / f"{stage}.py")[1]
        run_dir = OmegaConf.to_container(_default(paper, name).hydra, resolve=False)["run"]["dir"]
        assert f"{stage}: `{_pattern(run_dir)}/`" in row["run directory"]


@pytest.mark.parametrize("paper", papers())
def test_every_entry_point_writes_under_runs_paper_by_default(paper):
    if paper in NOT_LANDED:
        pytest.skip(f"{paper}/ has no README.md yet (being built): the README's rules apply then")
    for path in sorted((ROOT / paper).glob("*.py")):
        main = hydra_main(path)
        if main is None:
            continue
        dirs = OmegaConf.to_container(_default(paper, main[1]).hydra, resolve=False)
        # an eval writes next to the runs it evaluates, or (one that can also evaluate a model
        # from elsewhere, e.g. gemini_longctx on a Hugging Face model) under runs/<paper>/
        allowed = ("${runs}/", f"runs/{paper}/") if main[1] == "eval" else (f"runs/{paper}/",)
        assert dirs["run"]["dir"].startswith(allowed), (path, dirs["run"]["dir"])
        if main[1] != "eval":
            assert dirs["sweep"]["dir"].startswith(allowed), (path, dirs["sweep"]["dir"])


def test_the_layout_block_names_every_common_module():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout") :].split("```")[1]
    modules = sorted(p.name for p in (ROOT / "common").glob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if m not in layout] == []
    kernels = sorted(p.name for p in (ROOT / "common" / "kernels").iterdir() if p.is_dir())
    kernels = [k for k in kernels if not k.startswith("__")]
    assert [k for k in kernels if f"{k}/" not in layout] == []
    for kernel in kernels:
        for name in ("reference.py", "triton.py", "README.md"):
            assert (ROOT / "common" / "kernels" / kernel / name).is_file(), (kernel, name)
