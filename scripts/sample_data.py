"""Fill the domain store with a seeded, realistic sample dataset (and write data/sample/*.csv/json).

    python scripts/sample_data.py [--seed N] [--data-dir DIR] [--database-url URL] [--schema NAME]

Without ``--database-url`` the store is the one :class:`~mlmesh.settings.Settings` names (PostgreSQL when
``MLMESH_DATABASE_URL`` is set, else ``data/domain.sqlite``). Running it twice adds nothing the second time
(inserts are idempotent by id) and rewrites identical files.

What it generates (seed 7 by default; every draw comes from ``np.random.default_rng(seed)``):

* 300 prompts over 8 domains (coding, sql, writing, analysis, customer_support, education, data_science,
  classification), from templates in six styles: vague one-liners, plain requests, markdown sections,
  bulleted requirements, code blocks and XML tags. Text features (length, words, headers, lists, code, XML,
  a 0..1 ``vagueness``) are measured on the text itself.
* The 7 rules: clarity, specificity, chain_of_thought, few_shot, role, xml_structure, linguistic_quality.
* 600 sessions over the 90 days from 2025-01-01 UTC, each applying 1–4 rules chosen at random (independent of
  the domain, so effects are identifiable) in priority order — about 1,500 rule applications.
* Feedback (rating 1–5) for about 45% of sessions.

Planted structure (what analyses should recover):

* ``before_quality`` = 0.25 + 0.35·(1 − vagueness) + 0.08·headers + 0.05·list + 0.05·xml + N(0, 0.04),
  clipped to [0.05, 0.9]; each later rule starts from the previous rule's ``after_quality``.
* A rule's improvement is ``effect × (1 − before) + N(0, 0.03)`` with ``effect`` = base + domain bonus
  (:data:`BASE_EFFECT`, :data:`DOMAIN_BONUS`): chain_of_thought helps analysis (+0.20), coding and
  data_science (+0.15) and sql (+0.10); few_shot helps classification (+0.25) and customer_support (+0.08);
  role helps customer_support (+0.12) and education (+0.10); xml_structure helps coding / data_science
  (+0.06) and sql (+0.05); linguistic_quality helps writing (+0.12); specificity helps writing (+0.05) and
  education (+0.04). Clarity's effect is scaled by (0.5 + vagueness): it helps vague prompts most.
* Trend: specificity's effect rises linearly by +0.08 over the 90 days (:data:`SPECIFICITY_TREND`).
* ``improvement_score`` = after − before; ``success`` = improvement_score > 0.
* ``latency_ms`` = per-rule base (:data:`BASE_LATENCY_MS`) × (1 + length/2000) × LogNormal(0, 0.3).
* Rating = round(1 + 4·sigmoid((session improvement − 0.12)/0.05) + N(0, 0.7)), clipped to 1..5: ratings
  rise with the session's total improvement.
* few_shot's ``n_examples`` varies from 1 to 6 (its own random stream); its effect is multiplied by
  1 − 0.1·(n − 3)² (at least 0.4): three examples work best. ``data/sample/few_shot_parameters.csv`` holds those
  applications (n_examples, improvement_score, relative_gain = improvement / headroom) for the rule optimiser.

Experiment files (own random streams, so they do not change the data above):

* ``experiment_control.csv`` / ``experiment_treatment.csv``: 1,500 users per arm, ``value`` = the user's
  mean improvement in the experiment (control N(0.10, 0.06²), treatment +0.006) and ``covariate`` = the
  same metric before it (correlation 0.7, for CUPED).
* ``observational.csv``: 1,200 users; ``treatment`` = used chain_of_thought, chosen more often by users with
  analysis-heavy work (``analysis_share``) and long prompts (``prompt_length_k``), which also raise the
  ``outcome`` on their own; the true effect is +0.04. ``pre_outcome`` is measured before: a placebo.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmesh.settings import Settings
from services.domain import DomainStore, open_store
from services.text.features import TEXT_FEATURES, text_features

__all__ = [
    "BASE_EFFECT",
    "BASE_LATENCY_MS",
    "CSV_COLUMNS",
    "DOMAINS",
    "DOMAIN_BONUS",
    "RULES",
    "SPECIFICITY_TREND",
    "Dataset",
    "generate",
    "main",
    "text_features",
    "write_files",
    "write_store",
]

DEFAULT_SEED = 7
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z: a fixed epoch keeps the content independent of today's date
DAY = 86_400.0
SPAN_DAYS = 90
N_PROMPTS = 300
N_SESSIONS = 600
N_USERS = 40
FEEDBACK_SHARE = 0.45

DOMAINS = (
    "coding",
    "sql",
    "writing",
    "analysis",
    "customer_support",
    "education",
    "data_science",
    "classification",
)

RULES: tuple[dict[str, Any], ...] = (
    {
        "id": "role",
        "name": "Role assignment",
        "category": "context",
        "parameters": {"persona": "domain_expert", "position": "prefix"},
        "priority": 90,
    },
    {
        "id": "clarity",
        "name": "Clarity",
        "category": "core",
        "parameters": {"min_clarity": 0.6, "state_output_format": True},
        "priority": 80,
    },
    {
        "id": "specificity",
        "name": "Specificity",
        "category": "core",
        "parameters": {"add_constraints": True, "max_constraints": 3},
        "priority": 70,
    },
    {
        "id": "xml_structure",
        "name": "XML structure",
        "category": "structure",
        "parameters": {"tags": ["task", "context", "output"]},
        "priority": 60,
    },
    {
        "id": "few_shot",
        "name": "Few-shot examples",
        "category": "examples",
        "parameters": {"n_examples": 2, "diverse": True},
        "priority": 50,
    },
    {
        "id": "chain_of_thought",
        "name": "Chain of thought",
        "category": "reasoning",
        "parameters": {"style": "step_by_step", "show_reasoning": True},
        "priority": 40,
    },
    {
        "id": "linguistic_quality",
        "name": "Linguistic quality",
        "category": "language",
        "parameters": {"fix_grammar": True, "target_readability": 60},
        "priority": 30,
    },
)
RULE_IDS = tuple(r["id"] for r in RULES)
PRIORITY = {r["id"]: r["priority"] for r in RULES}

BASE_EFFECT = {
    "clarity": 0.10,
    "specificity": 0.08,
    "chain_of_thought": 0.03,
    "few_shot": 0.03,
    "role": 0.04,
    "xml_structure": 0.04,
    "linguistic_quality": 0.03,
}
DOMAIN_BONUS: dict[str, dict[str, float]] = {
    "chain_of_thought": {"analysis": 0.20, "coding": 0.15, "data_science": 0.15, "sql": 0.10},
    "few_shot": {"classification": 0.25, "customer_support": 0.08},
    "role": {"customer_support": 0.12, "education": 0.10},
    "xml_structure": {"coding": 0.06, "data_science": 0.06, "sql": 0.05},
    "linguistic_quality": {"writing": 0.12},
    "specificity": {"writing": 0.05, "education": 0.04},
}
SPECIFICITY_TREND = 0.08  # added to specificity's effect, linearly over the 90 days
NOISE_SD = 0.03
FEW_SHOT_BEST, FEW_SHOT_CURVATURE = 3, 0.1  # few_shot's n_examples optimum and how fast the effect falls off
# The A/B experiment: users randomised 50/50 to the old (control) or new (treatment) rule set.
EXPERIMENT_USERS = 1500  # per arm
EXPERIMENT_BASE, EXPERIMENT_LIFT, EXPERIMENT_SD = 0.10, 0.006, 0.06
EXPERIMENT_COVARIATE_R = 0.7  # correlation of the metric with the user's pre-period metric (CUPED)
# The observational check: analysis-heavy users choose chain_of_thought more often (confounding).
OBSERVATIONAL_UNITS, OBSERVATIONAL_EFFECT = 1200, 0.04
BASE_LATENCY_MS = {
    "clarity": 12.0,
    "specificity": 18.0,
    "chain_of_thought": 35.0,
    "few_shot": 55.0,
    "role": 8.0,
    "xml_structure": 22.0,
    "linguistic_quality": 40.0,
}
RULE_WEIGHTS = {  # how often each rule is picked (clarity and specificity are the defaults)
    "clarity": 1.6,
    "specificity": 1.3,
    "chain_of_thought": 1.0,
    "few_shot": 0.9,
    "role": 0.9,
    "xml_structure": 0.8,
    "linguistic_quality": 0.8,
}
RULES_PER_SESSION = ((1, 0.15), (2, 0.35), (3, 0.35), (4, 0.15))
STYLES = ("vague", "plain", "headers", "list", "code", "xml")
STYLE_WEIGHTS = (0.22, 0.22, 0.16, 0.16, 0.12, 0.12)
CODE_DOMAINS = frozenset({"coding", "sql", "data_science"})

FEATURES = TEXT_FEATURES
CSV_COLUMNS = (
    "application_id",
    "session_id",
    "rule_id",
    "domain",
    *FEATURES,
    "step",
    "day",
    "before_quality",
    "after_quality",
    "improvement_score",
    "latency_ms",
    "applied_at",
    "success",
    *(f"rule_{r}" for r in RULE_IDS),
    *(f"domain_{d}" for d in DOMAINS),
)

# --------------------------------------------------------------------------- prompt templates

TOPICS: dict[str, tuple[str, ...]] = {
    "coding": (
        "a function that removes duplicates from a list while keeping order",
        "a REST endpoint for user signup with email verification",
        "a retry decorator with exponential backoff",
        "a binary search over a sorted array of timestamps",
        "unit tests for an ISO-8601 date parser",
        "a command-line tool that renames files by a pattern",
        "a thread-safe LRU cache",
        "a CSV parser that handles quoted fields",
    ),
    "sql": (
        "monthly revenue per customer for the last year",
        "the top 5 products by return rate",
        "users who churned within 30 days of a price change",
        "duplicate orders placed within one minute",
        "a running total of signups per week",
        "the median session length per country",
    ),
    "writing": (
        "a product launch announcement for a budgeting app",
        "a cover letter for a data engineer role",
        "the opening of a short story set on a night train",
        "a blog post about working remotely across time zones",
        "release notes for version 2.3 of our editor",
        "a newsletter introduction about spring community events",
    ),
    "analysis": (
        "why conversion dropped 12% last quarter",
        "the trade-offs between two subscription pricing plans",
        "the root cause of the rise in support tickets",
        "whether our A/B test result can be trusted",
        "the main risks in a cloud vendor contract",
        "the drivers of employee attrition in the sales team",
    ),
    "customer_support": (
        "a refund request for a delivery that arrived a week late",
        "a customer locked out of their account after a password reset",
        "a complaint about being charged twice",
        "a question about upgrading from the basic to the pro plan",
        "a report that the mobile app crashes on startup",
        "a request to cancel a subscription before renewal",
    ),
    "education": (
        "photosynthesis",
        "the Pythagorean theorem",
        "supply and demand",
        "recursion in programming",
        "the causes of the First World War",
        "Bayes' theorem",
    ),
    "data_science": (
        "a churn prediction model for a telecom dataset",
        "feature engineering for daily sales time series",
        "handling severe class imbalance in fraud detection",
        "choosing between gradient boosting and logistic regression",
        "an anomaly detector for server CPU metrics",
        "offline evaluation of a recommender system",
    ),
    "classification": (
        "support tickets into billing, technical and account questions",
        "product reviews as positive, neutral or negative",
        "emails as spam or not spam",
        "news headlines by topic",
        "bug reports by severity",
        "job postings by seniority level",
    ),
}
VERBS = {
    "coding": "Write",
    "sql": "Write a SQL query for",
    "writing": "Draft",
    "analysis": "Analyse",
    "customer_support": "Reply to",
    "education": "Explain",
    "data_science": "Design",
    "classification": "Classify",
}
VAGUE = {
    "coding": ("code for {t}?", "help me with {t}", "{t} pls"),
    "sql": ("sql for {t}", "need a query: {t}", "how do i get {t}"),
    "writing": ("write {t}", "something for {t}", "can you do {t}"),
    "analysis": ("thoughts on {t}?", "look at {t}", "{t}?"),
    "customer_support": ("answer {t}", "handle {t}", "reply: {t}"),
    "education": ("explain {t}", "what is {t}", "teach {t}"),
    "data_science": ("help with {t}", "ideas for {t}", "{t}?"),
    "classification": ("classify {t}", "sort {t}", "label {t}"),
}
AUDIENCES = (
    "a non-technical manager",
    "a new team member",
    "an experienced engineer",
    "a 12-year-old student",
    "a busy executive",
    "a customer",
)
LANGUAGES = ("Python", "TypeScript", "Go", "Rust", "Java", "PostgreSQL")
CONSTRAINTS = (
    "keep it under 200 words",
    "use plain language",
    "include edge cases",
    "cite your assumptions",
    "give two alternatives",
    "end with a one-line summary",
    "use a friendly but professional tone",
    "prefer the standard library",
)
CODE_SNIPPETS = {
    "coding": "def dedupe(items):\n    seen = set()\n    return [x for x in items if not (x in seen or seen.add(x))]",
    "sql": "SELECT customer_id, SUM(amount)\nFROM orders\nGROUP BY customer_id;",
    "data_science": "model = LogisticRegression(max_iter=1000)\nmodel.fit(X_train, y_train)",
}


def _prompt_text(rng: np.random.Generator, domain: str, style: str) -> str:
    topic = TOPICS[domain][rng.integers(len(TOPICS[domain]))]
    audience = AUDIENCES[rng.integers(len(AUDIENCES))]
    picks = rng.choice(len(CONSTRAINTS), size=3, replace=False)
    constraints = [CONSTRAINTS[i] for i in picks]
    verb = VERBS[domain]
    language = LANGUAGES[rng.integers(len(LANGUAGES))] if domain in CODE_DOMAINS else None
    request = f"{verb} {topic}" + (f" in {language}" if language and domain == "coding" else "")
    if style == "code" and domain not in CODE_DOMAINS:
        style = "list"
    if style == "vague":
        templates = VAGUE[domain]
        return templates[rng.integers(len(templates))].format(t=topic)
    if style == "plain":
        return f"{request} for {audience}. Please {constraints[0]}."
    if style == "headers":
        return (
            f"# Task\n{request}.\n\n## Audience\n{audience.capitalize()}.\n\n"
            f"## Requirements\n{constraints[0].capitalize()}; {constraints[1]}."
        )
    if style == "list":
        bullets = "\n".join(f"- {c}" for c in constraints)
        return f"{request}.\nRequirements:\n{bullets}"
    if style == "code":
        snippet = CODE_SNIPPETS[domain]
        fence = "sql" if domain == "sql" else "python"
        return f"{request}. Here is what I have so far:\n\n```{fence}\n{snippet}\n```\n\nPlease {constraints[0]}."
    return (
        f"<task>{request}</task>\n<audience>{audience}</audience>\n"
        f"<constraints>{'; '.join(constraints[:2])}</constraints>"
    )


def _improve_text(text: str, rule: str, domain: str) -> str:
    """The prompt after a rule's rewrite (a readable stand-in for what the rule engine would produce)."""
    label = domain.replace("_", " ")
    if rule == "role":
        return f"You are an expert in {label}.\n{text}"
    if rule == "clarity":
        return f"{text}\nState the expected output format explicitly."
    if rule == "specificity":
        return f"{text}\nConstraints: name concrete inputs, outputs and limits."
    if rule == "xml_structure":
        return f"<task>\n{text}\n</task>\n<output>the answer only</output>"
    if rule == "few_shot":
        return f"{text}\nExamples:\n- input: ... -> output: ...\n- input: ... -> output: ..."
    if rule == "chain_of_thought":
        return f"{text}\nThink step by step and show your reasoning before the final answer."
    return text[:1].upper() + text[1:] if text else text  # linguistic_quality: sentence case


# --------------------------------------------------------------------------- generation


@dataclass
class Dataset:
    """The generated rows, in the store's shapes."""

    seed: int
    prompts: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    applications: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    prompt_features: dict[str, dict[str, float]] = field(default_factory=dict)


def effect(rule: str, domain: str, vagueness: float, day: float) -> float:
    """The planted expected share of the remaining headroom (1 − before) that ``rule`` closes."""
    value = BASE_EFFECT[rule] + DOMAIN_BONUS.get(rule, {}).get(domain, 0.0)
    if rule == "clarity":
        value *= 0.5 + vagueness
    if rule == "specificity":
        value += SPECIFICITY_TREND * day / SPAN_DAYS
    return value


def few_shot_shape(parameters: dict[str, Any]) -> float:
    """few_shot works best with 3 examples: effect × max(0.4, 1 − 0.1·(n − 3)²) for n in 1..6; 1 for others."""
    n = parameters.get("n_examples")
    return 1.0 if n is None else max(0.4, 1.0 - FEW_SHOT_CURVATURE * (n - FEW_SHOT_BEST) ** 2)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def generate(seed: int = DEFAULT_SEED) -> Dataset:
    """The whole dataset for ``seed`` (pure: no I/O)."""
    rng = np.random.default_rng(seed)
    param_rng = np.random.default_rng([seed, 1])  # its own stream: the other draws stay as they were
    data = Dataset(seed=seed)
    data.rules = [{**rule, "enabled": True, "created_at": T0 - DAY} for rule in RULES]

    domains = rng.choice(len(DOMAINS), size=N_PROMPTS)
    styles = rng.choice(len(STYLES), size=N_PROMPTS, p=STYLE_WEIGHTS)
    created = np.sort(rng.uniform(T0, T0 + (SPAN_DAYS - 5) * DAY, size=N_PROMPTS))
    for i in range(N_PROMPTS):
        domain = DOMAINS[domains[i]]
        text = _prompt_text(rng, domain, STYLES[styles[i]])
        pid = f"p{i + 1:04d}"
        data.prompts.append({"id": pid, "text": text, "domain": domain, "created_at": round(float(created[i]), 3)})
        data.prompt_features[pid] = text_features(text)

    rule_p = np.array([RULE_WEIGHTS[r] for r in RULE_IDS])
    rule_p /= rule_p.sum()
    k_values = np.array([k for k, _ in RULES_PER_SESSION])
    k_p = np.array([p for _, p in RULES_PER_SESSION])
    end = T0 + SPAN_DAYS * DAY

    drafts = []
    for _ in range(N_SESSIONS):
        prompt = data.prompts[rng.integers(N_PROMPTS)]
        start = min(prompt["created_at"] + rng.exponential(3 * DAY), end - 3600.0)
        drafts.append((round(float(start), 3), prompt, f"u{rng.integers(N_USERS) + 1:03d}"))
    drafts.sort(key=lambda d: (d[0], d[1]["id"]))

    for s_index, (start, prompt, user) in enumerate(drafts):
        sid = f"s{s_index + 1:04d}"
        domain = prompt["domain"]
        feats = data.prompt_features[prompt["id"]]
        day = (start - T0) / DAY
        k = int(rng.choice(k_values, p=k_p))
        chosen = sorted(
            rng.choice(len(RULE_IDS), size=k, replace=False, p=rule_p), key=lambda j: -PRIORITY[RULE_IDS[j]]
        )
        quality = 0.25 + 0.35 * (1 - feats["vagueness"]) + 0.08 * feats["has_headers"]
        quality += 0.05 * feats["has_list"] + 0.05 * feats["has_xml"] + rng.normal(0, 0.04)
        quality = float(np.clip(quality, 0.05, 0.9))
        first_quality, clock, text = quality, start, prompt["text"]
        for step, j in enumerate(chosen):
            rule = RULE_IDS[j]
            parameters = dict(RULES[[r["id"] for r in RULES].index(rule)]["parameters"])
            if rule == "few_shot":  # a tunable parameter with a planted optimum, for the rule optimiser
                parameters["n_examples"] = int(param_rng.integers(1, 7))
            planted = effect(rule, domain, feats["vagueness"], day) * few_shot_shape(parameters)
            gain = planted * (1 - quality) + rng.normal(0, NOISE_SD)
            after = float(np.clip(quality + gain, 0.0, 1.0))
            latency = BASE_LATENCY_MS[rule] * (1 + feats["prompt_length"] / 2000) * rng.lognormal(0, 0.3)
            clock += latency / 1000 + rng.uniform(0.05, 0.5)
            before_r, after_r = round(quality, 6), round(after, 6)
            improvement = round(after_r - before_r, 6)
            data.applications.append(
                {
                    "id": f"{sid}-a{step + 1}",
                    "session_id": sid,
                    "rule_id": rule,
                    "parameters": parameters,
                    "before_quality": before_r,
                    "after_quality": after_r,
                    "improvement_score": improvement,
                    "latency_ms": round(float(latency), 3),
                    "context": {"domain": domain, **feats, "step": step + 1},
                    "applied_at": round(float(clock), 3),
                    "success": improvement > 0,
                }
            )
            text = _improve_text(text, rule, domain)
            quality = after
        finished = round(float(clock) + 1.0, 3)
        data.sessions.append(
            {
                "id": sid,
                "prompt_id": prompt["id"],
                "user_id": user,
                "original_prompt": prompt["text"],
                "improved_prompt": text,
                "started_at": start,
                "finished_at": finished,
            }
        )
        if rng.random() < FEEDBACK_SHARE:
            total = quality - first_quality
            latent = 1 + 4 * _sigmoid((total - 0.12) / 0.05) + rng.normal(0, 0.7)
            rating = int(np.clip(round(latent), 1, 5))
            data.feedback.append(
                {
                    "id": f"f{sid[1:]}",
                    "session_id": sid,
                    "rating": rating,
                    "text": _FEEDBACK_TEXT[rating],
                    "created_at": round(finished + float(rng.uniform(30, 3600)), 3),
                }
            )
    return data


_FEEDBACK_TEXT = {
    1: "The rewrite made the prompt worse.",
    2: "Barely changed; not useful.",
    3: "Some improvement, but generic.",
    4: "Clearer and more specific, good.",
    5: "Excellent: exactly the structure I needed.",
}


# --------------------------------------------------------------------------- output


def applications_csv(data: Dataset) -> str:
    """The flat applications table: ids, categories, numeric features, outcomes and one-hot columns."""
    domain_of = {p["id"]: p["domain"] for p in data.prompts}
    prompt_of = {s["id"]: s["prompt_id"] for s in data.sessions}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for a in data.applications:
        prompt_id = prompt_of[a["session_id"]]
        domain = domain_of[prompt_id]
        feats = data.prompt_features[prompt_id]
        writer.writerow(
            [
                a["id"],
                a["session_id"],
                a["rule_id"],
                domain,
                *(repr(feats[f]) for f in FEATURES),
                a["context"]["step"],
                repr(round((a["applied_at"] - T0) / DAY, 6)),
                repr(a["before_quality"]),
                repr(a["after_quality"]),
                repr(a["improvement_score"]),
                repr(a["latency_ms"]),
                repr(a["applied_at"]),
                int(a["success"]),
                *(int(a["rule_id"] == r) for r in RULE_IDS),
                *(int(domain == d) for d in DOMAINS),
            ]
        )
    return buf.getvalue()


def few_shot_csv(data: Dataset) -> str:
    """few_shot applications with their n_examples: the rule optimiser's observations."""
    lines = ["n_examples,improvement_score,relative_gain"]
    for a in data.applications:
        if a["rule_id"] == "few_shot":
            headroom = max(1e-6, 1 - a["before_quality"])
            gain = round(a["improvement_score"] / headroom, 6)
            lines.append(f"{a['parameters']['n_examples']},{a['improvement_score']!r},{gain!r}")
    return "\n".join(lines) + "\n"


def experiment_csvs(seed: int) -> dict[str, str]:
    """The A/B experiment arms and the observational table (see the module docstring)."""
    rng = np.random.default_rng([seed, 2])
    files = {}
    r = EXPERIMENT_COVARIATE_R
    for arm, lift in (("experiment_control", 0.0), ("experiment_treatment", EXPERIMENT_LIFT)):
        before = rng.normal(EXPERIMENT_BASE, EXPERIMENT_SD, EXPERIMENT_USERS)
        noise = rng.normal(0, EXPERIMENT_SD * math.sqrt(1 - r * r), EXPERIMENT_USERS)
        value = EXPERIMENT_BASE + lift + r * (before - EXPERIMENT_BASE) + noise
        rows = (f"{v:.6f},{c:.6f}" for v, c in zip(value, before, strict=True))
        files[arm] = "value,covariate\n" + "\n".join(rows) + "\n"
    n = OBSERVATIONAL_UNITS
    analysis = rng.beta(2, 3, n)
    length_k = rng.gamma(2.0, 0.4, n)
    logit = -1.0 + 2.5 * analysis + 0.8 * (length_k - 0.8)
    treated = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    base = 0.05 + 0.08 * analysis + 0.03 * length_k
    pre = base + rng.normal(0, 0.03, n)
    outcome = base + OBSERVATIONAL_EFFECT * treated + rng.normal(0, 0.03, n)
    rows = (
        f"{o:.6f},{t},{a:.6f},{k:.6f},{p:.6f}"
        for o, t, a, k, p in zip(outcome, treated, analysis, length_k, pre, strict=True)
    )
    files["observational"] = "outcome,treatment,analysis_share,prompt_length_k,pre_outcome\n" + "\n".join(rows) + "\n"
    return files


def prompts_json(data: Dataset) -> str:
    """Every prompt with its measured text features."""
    rows = [{**p, "features": data.prompt_features[p["id"]]} for p in data.prompts]
    return json.dumps(rows, indent=1, sort_keys=True) + "\n"


def write_files(data: Dataset, data_dir: Path) -> dict[str, Path]:
    """Write the applications table, the prompts, the few_shot observations and the experiment files."""
    out = data_dir / "sample"
    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "applications.csv": applications_csv(data),
        "prompts.json": prompts_json(data),
        "few_shot_parameters.csv": few_shot_csv(data),
        **{f"{name}.csv": text for name, text in experiment_csvs(data.seed).items()},
    }
    paths = {}
    for name, text in contents.items():
        paths[name] = out / name
        paths[name].write_text(text, encoding="utf-8")
    return paths


def write_store(data: Dataset, store: DomainStore) -> dict[str, int]:
    """Insert everything (idempotent by id); returns the new rows per table."""
    return {
        "prompts": store.add_prompts(data.prompts),
        "rules": store.add_rules(data.rules),
        "sessions": store.add_sessions(data.sessions),
        "rule_applications": store.add_applications(data.applications),
        "feedback": store.add_feedback(data.feedback),
    }


def main(argv: list[str] | None = None) -> int:
    """Generate, fill the store, write the files, print the counts; return the exit code."""
    parser = argparse.ArgumentParser(prog="sample_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--data-dir", type=Path, help="data directory (default: from the settings)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: MLMESH_DATABASE_URL, else SQLite)")
    parser.add_argument("--schema", default="mlmesh", help="PostgreSQL schema (default mlmesh)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url:
        overrides["database_url"] = args.database_url
    settings = Settings(**overrides)
    data = generate(args.seed)
    with open_store(settings, schema=args.schema) as store:
        added = write_store(data, store)
        totals = store.counts()
        backend = store.backend
    paths = write_files(data, settings.data_dir)
    print(f"domain store ({backend}), seed {args.seed}:")
    for table, total in totals.items():
        print(f"  {table:<18} {added[table]:>5} new  {total:>6} total")
    for path in paths.values():
        print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
