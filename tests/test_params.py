"""The parameter schema (mumath/params.py): one declaration per parameter, the notebooks' cells generated
from it, groups layered as documented, values checked where they are written."""
from pathlib import Path

import nbformat
import pytest

from mumath.config import STEPS as NOTEBOOKS
from mumath.config import notebook_parameters
from mumath.params import (SHARED, STEPS, SchemaError, flat_params, from_flat, from_notebook, parameters_cell,
                           resolve, step_defaults, to_flat)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"


def code_cells(path):
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def parameters_source(path):
    return next(c.source for c in code_cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))


@pytest.mark.parametrize("step", list(STEPS))
def test_each_notebooks_parameters_cell_is_the_generated_one(step):
    """Same names, same defaults, same doc lines: edit mumath/params.py, then `python -m mumath.param_cells`."""
    path = NOTEBOOK_DIR / NOTEBOOKS[step]
    assert parameters_source(path) == parameters_cell(step), f"{path.name}: run `python -m mumath.param_cells`"
    assert notebook_parameters(path) == to_flat(step, step_defaults(step))


@pytest.mark.parametrize("step", list(STEPS))
def test_flat_names_are_unique_and_map_back(step):
    names = [p.name for p in flat_params(STEPS[step].config)]
    assert len(names) == len(set(names)), f"{step}: two parameters share a notebook name"
    defaults = to_flat(step, step_defaults(step))
    assert from_notebook(step, defaults) == resolve(step)


def test_the_two_stages_differ_only_in_narration_and_defaults():
    stage1, stage2 = (code_cells(NOTEBOOK_DIR / NOTEBOOKS[s]) for s in ("stage1", "stage2"))
    assert [c.source for c in stage1 if "parameters" not in c.metadata.get("tags", [])] == \
        [c.source for c in stage2 if "parameters" not in c.metadata.get("tags", [])]
    assert STEPS["stage1"].config is STEPS["stage2"].config
    one, two = to_flat("stage1", step_defaults("stage1")), to_flat("stage2", step_defaults("stage2"))
    assert {k for k in one if one[k] != two[k]} == {"step_name", "init_model", "mode"}


def test_a_group_set_in_part_keeps_the_steps_other_defaults():
    augment = resolve("augment", overrides={"generation": {"max_new_tokens": 100}})
    assert (augment.generation.max_new_tokens, augment.generation.temperature, augment.generation.top_p) == \
        (100, 0.7, 0.95)
    assert resolve("evaluate").evaluation.generation.temperature == 0.0  # the same group, another step's defaults


def test_layers_declared_then_step_then_shared_then_the_steps_own():
    shared = {"evaluation": {"limit": 2, "batch_size": 64}, "seed": 3, "training": {"epochs": 1.0}}
    evaluate = resolve("evaluate", shared, {"evaluation": {"generation": {"max_new_tokens": 7}, "limit": 5}})
    assert (evaluate.evaluation.limit, evaluate.evaluation.batch_size, evaluate.seed) == (5, 64, 3)
    assert evaluate.evaluation.generation.max_new_tokens == 7 and evaluate.evaluation.few_shot == 0
    stage = resolve("stage2", shared)
    assert stage.training.epochs == 1.0 and stage.training.max_rows is None and stage.mode == "tir"


@pytest.mark.parametrize("values,key", [
    ({"limit": -1}, "limit"), ({"exec_timeout": 0}, "exec_timeout"), ({"modes": ["tor"]}, "modes"),
    ({"top_p": 1.5}, "top_p"), ({"benchmarks": []}, "benchmarks"), ({"batch_size": "8"}, "batch_size"),
])
def test_a_notebook_cell_is_checked_too_and_names_its_variable(values, key):
    with pytest.raises(SchemaError) as error:
        from_notebook("evaluate.base", dict(to_flat("evaluate", step_defaults("evaluate")), **values))
    assert error.value.key == key


def test_every_shared_setting_is_used_by_a_step_and_documented():
    docs = (REPO / "docs" / "params.md").read_text()
    for key in SHARED:
        assert any(key in schema.config.model_fields for schema in STEPS.values()), key
        assert f"`{key}`" in docs, f"docs/params.md does not describe '{key}'"


def test_run_dir_placeholders_and_names_survive_the_round_trip():
    values = from_flat("evaluate", {"model": "{run_dir}/stage2/final", "exec_workers": 1, "not_a_param": 1})
    assert values == {"model": "{run_dir}/stage2/final", "sandbox": {"workers": 1}}


def test_plot_training_log_draws_into_the_stages_own_folder(tmp_path):
    """05_stage2 used to read and draw <run>/stage2/ whatever its step: a `stage2.only` variant overwrote
    stage2/loss.png, and alone it failed with KeyError: 'step' (no stage2/log.jsonl)."""
    import json

    from mumath.steps import plot_training_log

    variant = tmp_path / "stage2.only"
    variant.mkdir()
    (variant / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "learning_rate": 1e-4}) + "\n"
                                               for s in (1, 2, 3)))
    assert plot_training_log(variant) is not None
    assert (variant / "loss.png").stat().st_size > 0 and not (tmp_path / "stage2").exists()
    empty = tmp_path / "stage2"
    empty.mkdir()
    assert plot_training_log(empty) is None and not (empty / "loss.png").exists()


def test_yaml_anchors_still_merge_into_steps(tmp_path):
    from mumath.config import load_params

    path = tmp_path / "p.yaml"
    path.write_text("run: x\nanchors:\n  eval: &eval {evaluation: {limit: 3, modes: [cot]}}\nsteps:\n"
                    "  evaluate.base: {<<: *eval, model: embedded}\n  evaluate: {<<: *eval, model: other}\n")
    _, plan = load_params(path)
    assert plan["evaluate.base"]["limit"] == plan["evaluate"]["limit"] == 3
    assert plan["evaluate"]["modes"] == ["cot"] and plan["evaluate"]["model"] == "other"


def test_a_mapping_parameter_is_replaced_whole():
    """`methods: {rephrase: 2}` asks for rephrasing only, not rephrasing plus the default methods."""
    assert resolve("augment", overrides={"methods": {"rephrase": 2}}).methods == {"rephrase": 2}
    assert resolve("synthesize", {"teacher": {"model": "x"}}, {"stages": {"tir": 1}}).stages == {"tir": 1}


def test_the_teacher_group_reaches_the_teacher(tmp_path):
    from mumath.steps import make_step_teacher

    config = resolve("augment", {"teacher": {"backend": "openai-chat", "base_url": "http://127.0.0.1:9/v1",
                                             "model": "m", "max_concurrency": 3, "max_retries": 5,
                                             "price_per_1m_prompt": 1.5}})
    teacher = make_step_teacher(config, tmp_path)
    engine = teacher.backend
    assert (engine.base_url, engine.model, engine.max_concurrency, engine.max_retries) == \
        ("http://127.0.0.1:9/v1", "m", 3, 5)
    assert teacher.usage.price_per_1m_prompt == 1.5 and teacher.cache.path == tmp_path / "cache" / "teacher.jsonl"
