"""Per mode, how many of the LangGraph run's final answers equal latentcomm run's for the same question, and both
task scores (the two results.json files beside this script)."""
import json
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["floor", "latent", "latent-decode", "kv", "text", "auto"]


def answers(name: str) -> dict:
    return {(a["mode"], a["question_id"]): a for a in json.loads((HERE / name).read_text())["answers"]}


job, graph = answers("job-results.json"), answers("langgraph-results.json")
print(f"{'mode':14} {'same answers':>12} {'job score':>9} {'graph score':>11}")
for mode in [m for m in ORDER if any(k[0] == m for k in graph)]:
    keys = [k for k in graph if k[0] == mode]
    graph_score = sum(graph[k]["correct"] for k in keys) / len(keys)
    if any(k[0] == mode for k in job):
        same = f"{sum(k in job and job[k]['final'] == graph[k]['final'] for k in keys)}/{len(keys)}"
        job_score = f"{sum(job[k]['correct'] for k in keys) / len(keys):.3f}"
    else:
        same, job_score = "not in job", "-"
    print(f"{mode:14} {same:>12} {job_score:>9} {graph_score:11.3f}")
