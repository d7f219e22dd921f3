"""docs/pipeline.md (the reference of the pipeline YAML file) stays in step with the code.

- every top-level key of ``tidal.stream.spec._KNOWN`` is in the "Top-level keys" table, and
  the table names no other;
- every registered step type (``tidal.stream.spec.step_types()``) has a ``### `name` ``
  heading under "steps", and every such heading is a registered type (or ``python``);
- each step's options table lists exactly the options its factory passes on (the parameters
  of the step class it builds), and where a default is written as one literal it is the
  code's default; the schema, batch, kafka, state and alerts tables likewise;
- every ```yaml block loads: a whole pipeline (a ``pipeline:`` key) with
  ``from_dict(..., check=False)`` and no ``Pipeline.problems()``; a fragment of top-level keys
  (``batch: ...``, ``schema: ...``, ``alerts: ...``) the same way, inside a pipeline; a list
  of steps inside a pipeline of its own. Each alert rule is read with ``AlertRule.from_dict``.

The examples need files: a model folder ``models/fraud-v1`` (relative to the YAML file) and
the user package ``mypackage`` (``mypackage.steps:flag_large``, ``mypackage.reducers:P90``).
The ``examples`` fixture makes both in a temporary folder, which is the ``base`` the blocks
are loaded from, so every block is checked and none has to be skipped. Nothing needs Kafka:
steps that talk to Kafka or a server (``deployed``, ``enrich``, ``remote``) only do so once
a worker opens them.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from tidal.stream.spec import _KNOWN, from_dict, step_types

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"
TEXT = DOC.read_text()


# -- reading the page -------------------------------------------------------------------------
def section(text: str, title: str, level: int = 2) -> str:
    """The body of the ``#``*level* heading ``title`` (up to the next heading of that level or above)."""
    marks = "#" * level
    m = re.search(rf"^{marks} {re.escape(title)}\s*$", text, re.M)
    assert m, f"docs/pipeline.md has no heading {marks} {title}"
    end = re.search(rf"^#{{1,{level}}} ", text[m.end():], re.M)
    return text[m.end(): m.end() + end.start() if end else len(text)]


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in ``text``: a list of rows (cells), header and separator left out."""
    out, rows = [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if rows is None:
                rows = []  # the header
            elif not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows is not None:
            out.append(rows)
            rows = None
    return out


def names(cell: str) -> list[str]:
    """The backticked names of a first cell: ``"`unit`, `unit_field`"`` → ``["unit", "unit_field"]``."""
    return re.findall(r"`([^`]+)`", cell)


def table_options(text: str) -> list[dict[str, str]]:
    """Per table in ``text``: option name → its default cell."""
    return [{n: row[1] for row in rows for n in names(row[0])} for rows in tables(text)]


def step_sections() -> dict[str, str]:
    steps = section(TEXT, "steps")
    heads = list(re.finditer(r"^### `([^`]+)`\s*$", steps, re.M))
    return {h.group(1): steps[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(steps)]
            for i, h in enumerate(heads)}


def yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", TEXT, re.M | re.S)


def params(*callables: Callable) -> list[str]:
    """Named parameters of each callable (no ``self``, ``*args``, ``**kwargs``), in order."""
    out: list[str] = []
    for c in callables:
        for p in inspect.signature(c).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in out:
                out.append(p.name)
    return out


def known_keys(section_name: str) -> list[str]:
    """The keys ``from_dict`` accepts in a section, as its error message for an unknown one lists them."""
    with pytest.raises(ValueError) as err:
        from_dict({"pipeline": "x", section_name: {"not_a_key": 1}}, check=False)
    return ast.literal_eval(str(err.value).rsplit("known: ", 1)[1])


# -- the step types and what builds them ------------------------------------------------------
def step_signatures() -> dict[str, tuple[list[list[Callable]], set[str], set[str], dict[str, str]]]:
    """Step type → (per options table: the callables whose parameters are its options;
    parameters YAML cannot give; options read outside the signatures; YAML name of a parameter).

    Types whose options are per-field mappings (normalize, impute, outliers), and quality and
    python, are checked in their own tests below.
    """
    from tidal.detect.step import SeriesAnomalyStep
    from tidal.features import SessionAggregate, SlidingAggregate, WindowAggregate
    from tidal.features.enrich import TableJoin
    from tidal.features.keyed import KeyedAggregate
    from tidal.features.sql import SqlStep
    from tidal.models.deployed import DeployedScoreStep
    from tidal.models.explain import ExplainStep
    from tidal.models.score import ScoreStep
    from tidal.quality.anomaly import AnomalyStep
    from tidal.quality.integrity import IntegrityStep
    from tidal.quality.profile import ProfileStep
    from tidal.quality.rules import ValidateStep
    from tidal.serve.remote import RemoteScoreStep

    return {
        "score": ([[ScoreStep]], set(), set(), {}),
        # settings: the worker's KafkaSettings object, given to the step when it opens
        "deployed": ([[DeployedScoreStep]], {"settings"}, set(), {}),
        # model: the score/deployed step before it (``previous``), not an option
        "explain": ([[ExplainStep]], {"model"}, set(), {}),
        "remote": ([[RemoteScoreStep]], set(), set(), {}),
        "validate": ([[ValidateStep]], set(), set(), {}),
        "integrity": ([[IntegrityStep]], set(), set(), {}),
        # clock: a function, for tests
        "profile": ([[ProfileStep]], {"clock"}, set(), {}),
        # two forms, one table each; robust_window and max_keys are popped from **params
        "anomaly": ([[AnomalyStep], [SeriesAnomalyStep]], set(), {"robust_window", "max_keys"}, {}),
        # the window steps pass **state on to KeyedAggregate
        "window": ([[WindowAggregate, KeyedAggregate]], set(), set(), {}),
        "sliding": ([[SlidingAggregate, KeyedAggregate]], set(), set(), {}),
        "session": ([[SessionAggregate, KeyedAggregate]], set(), set(), {}),
        "sql": ([[SqlStep]], set(), set(), {}),
        # tidal.features.spec:enrich reads the topic as `table`
        "enrich": ([[TableJoin]], set(), set(), {"topic": "table"}),
    }


OWN_TESTS = {"quality", "normalize", "impute", "outliers"}


# -- the tests --------------------------------------------------------------------------------
def test_the_page_is_read_at_all():
    """The parsers find what the other tests check (so that none of them passes on nothing)."""
    assert len(step_sections()) >= len(step_types()) >= 10
    assert len(yaml_blocks()) >= len(step_types())
    assert len(tables(section(TEXT, "Top-level keys"))[0]) == len(_KNOWN)


def test_every_top_level_key_is_in_the_table():
    documented = [n for row in tables(section(TEXT, "Top-level keys"))[0] for n in names(row[0])[:1]]
    assert sorted(set(_KNOWN) - set(documented)) == [], "top-level keys missing from docs/pipeline.md"
    assert sorted(set(documented) - set(_KNOWN)) == [], "docs/pipeline.md documents keys from_dict refuses"


def test_every_registered_step_type_has_a_heading():
    headings = step_sections()
    missing = sorted(set(step_types()) - set(headings))
    assert missing == [], f"step types without a ### `name` heading in docs/pipeline.md: {missing}"
    stale = sorted(set(headings) - set(step_types()) - {"python"})
    assert stale == [], f"docs/pipeline.md documents step types that are not registered: {stale}"


def test_every_step_type_is_signature_checked_or_has_its_own_test():
    assert set(step_types()) <= set(step_signatures()) | OWN_TESTS


@pytest.mark.parametrize("kind", sorted(step_signatures()))
def test_step_options_match_the_code(kind):
    groups, hidden, extra, rename = step_signatures()[kind]
    docs = table_options(step_sections()[kind])
    assert len(docs) == len(groups), f"`{kind}`: expected {len(groups)} options table(s), found {len(docs)}"
    want = {rename.get(p, p) for g in groups for p in params(*g)} - hidden | extra
    have = {n for t in docs for n in t}
    assert sorted(want - have) == [], f"`{kind}`: options missing from docs/pipeline.md"
    assert sorted(have - want) == [], f"`{kind}`: docs/pipeline.md lists options the code does not take"
    back = {v: k for k, v in rename.items()}
    for table, group in zip(docs, groups):  # a default written as one literal is the code's
        for option, cell in table.items():
            m = re.fullmatch(r"`([^`]*)`", cell)
            p = next((inspect.signature(c).parameters[back.get(option, option)] for c in group
                      if back.get(option, option) in inspect.signature(c).parameters), None)
            if m is None or p is None or p.default is inspect.Parameter.empty or p.default is None:
                continue
            code = list(p.default) if isinstance(p.default, tuple) else p.default
            doc = m.group(1)  # `tidal.models` is the string itself; `""`, `3`, `true`: YAML
            doc = yaml.safe_load(doc) if not isinstance(code, str) or doc.startswith('"') else doc
            assert doc == code, f"`{kind}`: {option} defaults to {code!r} in the code, {cell} in docs/pipeline.md"


def test_quality_parts():
    from tidal.quality.chain import ORDER

    (parts,) = table_options(step_sections()["quality"])
    assert list(parts) == list(ORDER)
    assert set(ORDER) <= set(step_types())  # each part is also a step type of its own


def test_per_field_options_of_normalize_impute_outliers():
    from tidal.quality.impute import STRATEGIES, ImputeStep
    from tidal.quality.outliers import METHODS, POLICIES, OutlierStep
    from tidal.stream.schema import Field

    sections = step_sections()
    (normalize,) = table_options(sections["normalize"])
    field_options = {f.name for f in dc_fields(Field)}
    assert set(normalize) <= field_options
    assert {"type", "timestamp", "unit", "unit_field", "units", "coerce", "trim", "case"} <= set(normalize)

    (impute,) = table_options(sections["impute"])
    assert set(ImputeStep({"x": {"strategy": "constant", "value": 0, "key": "k"}}).fields["x"]) == set(impute)
    strategy_row = next(r for r in tables(sections["impute"])[0] if names(r[0]) == ["strategy"])
    assert set(STRATEGIES) <= set(names(strategy_row[2]))

    (outliers,) = table_options(sections["outliers"])
    assert set(OutlierStep({"x": {"key": "k"}}).fields["x"]) == set(outliers)
    rows = {names(r[0])[0]: r for r in tables(sections["outliers"])[0]}
    assert set(METHODS) <= set(names(rows["method"][2])) and set(POLICIES) <= set(names(rows["policy"][2]))
    assert rows["window"][1] == f"`{inspect.signature(OutlierStep).parameters['window'].default}`"
    assert rows["min_count"][1] == f"`{inspect.signature(OutlierStep).parameters['min_count'].default}`"


def test_schema_options_are_the_fields_of_Field():
    from tidal.stream.schema import TYPES, Field

    (table,) = table_options(section(TEXT, "schema"))
    assert set(table) == {f.name for f in dc_fields(Field)} - {"name"}
    defaults = {f.name: f.default for f in dc_fields(Field)}
    for option, cell in table.items():
        m = re.fullmatch(r"`([^`]*)`", cell)
        if m and defaults[option] is not None:
            assert yaml.safe_load(m.group(1)) == defaults[option], option
    assert all(f"`{t}`" in section(TEXT, "schema") for t in TYPES)


@pytest.mark.parametrize("name", ["batch", "kafka", "state"])
def test_section_keys_are_the_ones_from_dict_accepts(name):
    (table,) = table_options(section(TEXT, name))
    assert list(table) == known_keys(name)


def test_batch_and_top_level_defaults():
    p = from_dict({"pipeline": "x"}, check=False)
    (batch,) = table_options(section(TEXT, "batch"))
    assert batch == {"max_batch": f"`{p.max_batch}`", "max_wait_ms": f"`{p.max_wait_ms}`"}
    top = {names(r[0])[0]: r[2] for r in tables(section(TEXT, "Top-level keys"))[0]}
    assert top["partitions"] == f"`{p.partitions}`"
    assert top["exactly_once"] == f"`{str(p.exactly_once).lower()}`"
    assert top["group"] == "`tidal.<pipeline>`" and p.group == "tidal.x"
    assert (top["sources"], top["sink"], top["dlq"]) == ("`<pipeline>.events`", "`<pipeline>.predictions`",
                                                          "`<pipeline>.dlq`")
    assert (p.sources, p.sink, p.dlq) == (["x.events"], "x.predictions", "x.dlq")


def test_alert_rule_keys():
    from tidal.monitor.alerts import AlertRule

    (table,) = table_options(section(TEXT, "alerts"))
    kinds = {"value", "rate", "absent_for_s"}  # the YAML form of AlertRule's kind, op and threshold
    assert set(table) == {f.name for f in dc_fields(AlertRule)} - {"kind", "op", "threshold"} | kinds
    rule = AlertRule.from_dict({"name": "r", "metric": "m", "value": "> 1"})
    for key in ("window_s", "for_s", "severity"):
        cell = table[key].strip("`")
        assert (cell if key == "severity" else float(cell)) == getattr(rule, key), key


@pytest.fixture
def examples(tmp_path, monkeypatch):
    """The folder the page's YAML blocks are loaded from: the model folder and user package they name."""
    from sklearn.linear_model import LogisticRegression

    from tidal.models import save_model

    X = np.array([[1.0, 0.0], [5.0, 1.0], [900.0, 2.0], [1500.0, 0.0]])
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    save_model(model, tmp_path / "models" / "fraud-v1", "fraud", 1, ["amount", "merchant_category"],
               categories={"merchant_category": ["fuel", "grocery", "travel"]})
    pkg = tmp_path / "pkg" / "mypackage"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "steps.py").write_text(
        "def flag_large(limit):\n"
        "    return lambda batch: batch.with_column('large', batch.column('amount') > limit)\n")
    (pkg / "reducers.py").write_text(
        "import numpy as np\n"
        "class P90:\n"
        "    def init(self): return []\n"
        "    def update(self, state, values): return state + values.tolist()\n"
        "    def result(self, state): return float(np.quantile(state, 0.9)) if state else float('nan')\n"
        "    def merge(self, a, b): return a + b\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypackage" or m.startswith("mypackage.")]:
        del sys.modules[name]


def _load(block: str, base: Path) -> Any:
    """Build what ``block`` declares; returns the pipeline."""
    from tidal.monitor.alerts import AlertRule

    data = yaml.safe_load(block)
    if isinstance(data, list):  # a step example: `- window: {...}`
        for item in data:
            assert isinstance(item, dict), f"a step item is a mapping: {item!r}"
            kind = "python" if "python" in item else next(iter(item))
            assert kind == "python" or (len(item) == 1 and kind in step_types()), f"not a step type: {item!r}"
        spec = {"pipeline": "example", "steps": data}
    else:
        assert isinstance(data, dict), f"a YAML block is a pipeline, a fragment of one, or steps:\n{block}"
        unknown = set(data) - _KNOWN
        assert not unknown, f"a YAML block with keys that are not top-level keys: {sorted(unknown)}\n{block}"
        spec = data if "pipeline" in data else {"pipeline": "example", **data}
    pipeline = from_dict(spec, base=base, check=False)
    assert pipeline.problems() == [], block
    for rule in spec.get("alerts") or []:
        AlertRule.from_dict(rule)
    return pipeline


@pytest.mark.parametrize("index", range(len(yaml_blocks())))
def test_yaml_block_loads(index, examples):
    _load(yaml_blocks()[index], examples)


def test_the_complete_example_is_a_whole_pipeline(examples):
    first = yaml_blocks()[0]
    data = yaml.safe_load(first)
    assert "pipeline" in data and data["steps"]
    p = _load(first, examples)
    out, dlq = p.test([b'{"card_id": "c1", "amount": 1200.0, "merchant_category": "fuel", '
                       b'"ts": "2024-01-01T00:00:00Z"}', b'{"card_id": "c1"}'])
    assert len(out) == 1 and [r.reason for r in dlq] == ["missing_field"]
    assert b'"spend_1h":1200.0' in out[0] and b'"large":true' in out[0] and b'"score":' in out[0]


def test_the_checks_can_fail(monkeypatch):
    """A step type registered without a heading is caught."""
    types = dict(step_types())
    types["brand_new"] = types["score"]
    monkeypatch.setattr(sys.modules[__name__], "step_types", lambda: types)
    with pytest.raises(AssertionError, match="brand_new"):
        test_every_registered_step_type_has_a_heading()
