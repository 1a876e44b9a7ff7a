"""The models' calling conventions: `return_dict`, refused unknown arguments, the Trainer's loss scaling, the public
markers, `AutoModelForCTR`, and an import that leaves the environment alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from test_modeling import make_batch, pretraining_inputs

import ptum_hf
from ptum_hf import (
    IGNORE_INDEX,
    MASK_INDEX,
    PAD_INDEX,
    AutoModelForCTR,
    PTUMForCTR,
    PTUMForDemographicClassification,
    PTUMForPretraining,
    PTUMModel,
    modeling_ptum,
)

from conftest import tiny_config

HEADS = [PTUMModel, PTUMForPretraining, PTUMForDemographicClassification, PTUMForCTR]


def inputs_for(head) -> dict:
    """A labelled batch for `head`, as keyword arguments."""
    if head is PTUMForPretraining:
        return pretraining_inputs()
    ids, mask, history, gaps = make_batch()
    inputs = dict(behavior_input_ids=ids, behavior_attention_mask=mask, history_indices=history, history_time_gaps=gaps)
    if head is PTUMForDemographicClassification:
        inputs["labels"] = torch.tensor([[0, 1], [3, -100], [-100, 0]])
    elif head is PTUMForCTR:
        inputs.update(
            ad_title_indices=torch.tensor([0, 1, 2]),
            ad_description_indices=torch.tensor([3, -1, 4]),
            labels=torch.tensor([1.0, 0.0, 1.0]),
        )
    return inputs


def assert_same(output, expected):
    assert isinstance(output, tuple) and len(output) == len(expected)
    for got, want in zip(output, expected):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- return_dict


@pytest.mark.parametrize("head", HEADS)
def test_return_dict_false_gives_the_output_as_a_tuple_loss_first(head):
    torch.manual_seed(0)
    model = head(tiny_config()).eval()
    output = model(**inputs_for(head))
    as_tuple = model(**inputs_for(head), return_dict=False)
    assert_same(as_tuple, output.to_tuple())
    if head is not PTUMModel:
        assert list(output.keys())[0] == "loss"
        torch.testing.assert_close(as_tuple[0], output.loss)
    assert type(model(**inputs_for(head), return_dict=True)) is type(output)


@pytest.mark.parametrize("head", HEADS)
def test_config_return_dict_false_is_the_default_and_heads_still_read_the_base_output(head):
    torch.manual_seed(0)
    model = head(tiny_config(return_dict=False)).eval()
    output = model(**inputs_for(head))  # the heads read `self.ptum(...)` fields: the base must give them a ModelOutput
    assert isinstance(output, tuple)
    assert_same(output, model(**inputs_for(head), return_dict=True).to_tuple())


def test_pretraining_tuple_keeps_field_order_with_one_task_off():
    model = PTUMForPretraining(tiny_config(use_mbp=False)).eval()
    output = model(**pretraining_inputs())
    assert list(output.keys()) == ["loss", "nbp_loss", "nbp_logits", "nbp_accuracy"]
    assert_same(model(**pretraining_inputs(), return_dict=False), output.to_tuple())


# ----------------------------------------------------------------------------- unknown arguments


@pytest.mark.parametrize("head", HEADS)
def test_a_misspelled_batch_key_is_refused_naming_it_and_the_accepted_ones(head):
    model = head(tiny_config()).eval()
    inputs = inputs_for(head)
    key = "mbp_history_indices" if head is PTUMForPretraining else "history_indices"
    inputs[key[:-1]] = inputs.pop(key)
    with pytest.raises(TypeError) as raised:
        model(**inputs)
    message = str(raised.value)
    assert f"{head.__name__}.forward() got unexpected keyword argument(s) '{key[:-1]}'" in message
    assert f"did you mean '{key}'?" in message
    assert "it accepts: behavior_input_ids, behavior_attention_mask" in message and "return_dict" in message
    with pytest.raises(TypeError, match=r"'user_ids'( \(did you mean 'user_bucket_ids'\?\))?, 'extra'"):
        model(**inputs_for(head), user_ids=[1, 2, 3], extra=None)


@pytest.mark.parametrize("head", HEADS)
def test_generic_hugging_face_arguments_are_accepted(head):
    torch.manual_seed(0)
    model = head(tiny_config()).eval()
    expected = model(**inputs_for(head)).to_tuple()
    output = model(
        **inputs_for(head), num_items_in_batch=torch.tensor(4), output_attentions=False, output_hidden_states=None
    )
    assert_same(output.to_tuple(), expected)
    with pytest.raises(ValueError, match="does not support output_hidden_states=True"):
        model(**inputs_for(head), output_hidden_states=True)


@pytest.mark.parametrize("head", [PTUMForDemographicClassification, PTUMForCTR])
def test_trainer_divides_the_loss_by_the_gradient_accumulation_steps(tmp_path, head):
    """With `**kwargs` in `forward`, the Trainer would take the model for one that normalises its loss by
    `num_items_in_batch` and skip the division: every accumulated step's gradient twice as large here."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = head(tiny_config())
    args = TrainingArguments(str(tmp_path), gradient_accumulation_steps=2, report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    assert trainer.model_accepts_loss_kwargs is False
    inputs = inputs_for(head)
    num_items = trainer._get_num_items_in_batch([inputs], torch.device("cpu"))
    trainer.current_gradient_accumulation_steps = 2
    step_loss = trainer.training_step(model, inputs, num_items)
    torch.testing.assert_close(step_loss, model(**inputs).loss.detach() / 2)


# ----------------------------------------------------------------------------- markers


def test_markers_are_public_and_exported():
    assert (PAD_INDEX, MASK_INDEX, IGNORE_INDEX) == (-1, -2, -100)
    for name in ("PAD_INDEX", "MASK_INDEX", "IGNORE_INDEX"):
        assert name in modeling_ptum.__all__ and name in ptum_hf.__all__
        assert getattr(ptum_hf, name) is getattr(modeling_ptum, name)
    assert IGNORE_INDEX == torch.nn.CrossEntropyLoss().ignore_index


# ----------------------------------------------------------------------------- AutoModelForCTR


def test_auto_model_for_ctr_loads_the_ctr_head(tmp_path):
    model = PTUMForCTR(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCTR.from_pretrained(tmp_path)
    assert type(loaded) is PTUMForCTR
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert type(AutoModelForCTR.from_config(tiny_config())) is PTUMForCTR
    PTUMForPretraining(tiny_config()).save_pretrained(tmp_path / "base")  # a head on a pre-trained user model
    assert type(AutoModelForCTR.from_pretrained(tmp_path / "base")) is PTUMForCTR


def test_auto_model_for_ctr_refuses_other_configs():
    from transformers import BertConfig

    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCTR.from_config(BertConfig())


def test_auto_map_entry_for_ctr_is_harmless(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    model = PTUMForDemographicClassification(tiny_config())
    model.register_for_auto_classes()
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCTR"] == "modeling_ptum.PTUMForCTR"
    assert AutoConfig.from_pretrained(tmp_path).auto_map == auto_map
    assert type(AutoModel.from_pretrained(tmp_path)) is PTUMModel
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is PTUMForDemographicClassification
    assert type(AutoModelForCTR.from_pretrained(tmp_path)) is PTUMForCTR
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 prefers registered classes over shipped code. 4.x loads the shipped config class instead,
        # which no Auto class of ptum_hf knows: that load fails with this entry or without it.
        assert type(AutoModelForCTR.from_pretrained(tmp_path, trust_remote_code=True)) is PTUMForCTR


def test_auto_model_for_ctr_falls_back_when_the_auto_factory_changes(tmp_path):
    PTUMForCTR(tiny_config()).save_pretrained(tmp_path)
    code = f"""
from transformers import AutoModel, AutoModelForPreTraining, AutoModelForSequenceClassification
import transformers.models.auto.auto_factory as factory
del factory._LazyAutoMapping  # as if a transformers release had renamed it
import ptum_hf
assert not hasattr(ptum_hf.AutoModelForCTR, "_model_mapping")
print(type(ptum_hf.AutoModelForCTR.from_pretrained({str(tmp_path)!r})).__name__)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "PTUMForCTR"


# ----------------------------------------------------------------------------- huge pages


def run_python(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_import_leaves_the_environment_alone():
    assert run_python("import os, ptum_hf, ptum_hf.cli; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))") == "None"


# The `ptum-hf` program, with a command that reports what torch got.
PROGRAM = """
import os, resource, sys
from ptum_hf import cli

def probe(argv):
    import torch
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 1024 * 1024)  # 64 MiB: 16384 small pages, or 32 huge ones
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(os.environ.get("THP_MEM_ALLOC_ENABLE"), faults)

cli.COMMANDS["probe"] = probe
sys.argv = ["ptum-hf", "probe"]
cli.main()
"""


def _huge_pages_available() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux setting")
def test_the_program_turns_huge_pages_on_before_torch_reads_them_unless_the_user_set_them():
    on, on_faults = run_python(PROGRAM).split()
    off, off_faults = run_python(PROGRAM, THP_MEM_ALLOC_ENABLE="0").split()
    assert (on, off) == ("1", "0")  # the user's choice stands
    if _huge_pages_available():
        # torch reads the variable at its first CPU allocation: if importing ptum_hf (or a library it imports) ever
        # allocated a tensor, the program's setting would come too late and change nothing.
        assert int(on_faults) * 4 < int(off_faults), (on_faults, off_faults)


def test_python_callers_of_main_keep_their_environment(monkeypatch):
    from ptum_hf import cli

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "noop", lambda argv: None)
    cli.main(["noop"])
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ
