"""Reading the published checkpoint layout, refusing unsafe pickles, and our own save/load."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from builders import save_original_gates
from builders import tiny_config as builders_tiny_config
from transformers import BertForSequenceClassification, BertTokenizer

from top.errors import UserError
from top.method.checkpoint import GATES_FORMAT, load_checkpoint, save_checkpoint
from top.method.gates import TokenGates

# Gate logits at the clamp bounds of the original: log(1e2) keeps a gate open, log(1e-2) closes
# it (its expected-zero share is 0.953, so up to 10 closed gates per row round to themselves).
OPEN, CLOSED = 4.6, -4.6

def tiny_config():
    return builders_tiny_config(finetuning_task="sst2", vocab_size=99)


def tiny_state_dict(config):
    torch.manual_seed(0)
    return BertForSequenceClassification(config).state_dict()


def logits_for(pattern):
    """Gate logits whose deterministic masks are ``pattern`` (distinct values, no ties)."""
    pattern = torch.as_tensor(pattern, dtype=torch.float32)
    jitter = torch.arange(pattern.numel(), dtype=torch.float32).reshape(pattern.shape) * 0.01
    return torch.where(pattern > 0, OPEN - jitter, CLOSED + jitter)


def publish(tmp_path, *, token_pattern, pruner_pattern, locations, zs=True, l0=True, token_loga=None, legacy=False):
    """A directory in the authors' layout; returns (directory, the gate values it was built from).

    The gate logits give exactly the two patterns as masks, unless ``token_loga`` is given.
    """
    config = tiny_config()
    directory = tmp_path / "published"
    directory.mkdir()
    config.save_pretrained(str(directory))
    torch.save(tiny_state_dict(config), str(directory / "pytorch_model.bin"))
    token_pattern = torch.tensor(token_pattern, dtype=torch.float32)
    pruner_pattern = torch.tensor(pruner_pattern, dtype=torch.float32)
    gates = dict(
        token_prune_loc=locations,
        bin_num=token_pattern.shape[1],
        token_loga=logits_for(token_pattern) if token_loga is None else token_loga,
        pruner_loga=logits_for(pruner_pattern),
        lambda_1=0.25,
        lambda_2=-1.5,
        temperature=2.0 / 3.0,
        magical_number=0.8,
    )
    if zs:
        torch.save({"token_z": token_pattern, "pruner_z": pruner_pattern}, str(directory / "zs.pt"))
    if l0:
        file = save_original_gates(tmp_path, config, legacy=legacy, **gates)
        os.replace(str(file), str(directory / "l0_module.pt"))
    return directory, gates


TOKEN_PATTERN = [[1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1]]
PRUNER_PATTERN = [1, 0]


@pytest.fixture
def published(tmp_path):
    return publish(tmp_path, token_pattern=TOKEN_PATTERN, pruner_pattern=PRUNER_PATTERN, locations=[1, 3])


def test_published_layout_round_trip(published):
    directory, gates = published
    checkpoint = load_checkpoint(directory)

    assert "models.l0_module" not in sys.modules and "models" not in sys.modules
    assert checkpoint.prune_locations == [1, 3]  # from token_prune_loc, not the trailing-layers guess
    assert checkpoint.bin_num == 6
    assert torch.equal(checkpoint.token_z, torch.tensor(TOKEN_PATTERN, dtype=torch.float32))
    assert torch.equal(checkpoint.pruner_z, torch.tensor(PRUNER_PATTERN, dtype=torch.float32))
    state = checkpoint.gate_state
    assert torch.equal(state["token_loga"], gates["token_loga"])
    assert torch.equal(state["pruner_loga"], gates["pruner_loga"])
    assert state["lambda_1"].item() == pytest.approx(0.25)
    assert state["lambda_2"].item() == pytest.approx(-1.5)
    assert not isinstance(state["token_loga"], torch.nn.Parameter)
    assert checkpoint.temperature == pytest.approx(2.0 / 3.0)
    assert checkpoint.magical_number == pytest.approx(0.8)
    assert checkpoint.config.hidden_size == 32 and checkpoint.config.num_hidden_layers == 4
    gates = TokenGates.from_state(state)  # the gate state feeds the trainable gates whole
    assert gates.prune_locations == [1, 3]
    assert all(torch.equal(a, b) for a, b in zip(gates.deterministic(), (checkpoint.token_z, checkpoint.pruner_z)))

    model = BertForSequenceClassification(tiny_config())
    model.load_state_dict(checkpoint.state_dict)  # strict: every key and shape fits
    expected = tiny_state_dict(tiny_config())
    assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in expected.items())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_masks_recomputed_from_gates_when_zs_is_missing(tmp_path, legacy):
    directory, _ = publish(
        tmp_path,
        token_pattern=TOKEN_PATTERN,
        pruner_pattern=PRUNER_PATTERN,
        locations=[1, 3],
        zs=False,
        legacy=legacy,
    )
    checkpoint = load_checkpoint(directory)
    assert torch.equal(checkpoint.token_z, torch.tensor(TOKEN_PATTERN, dtype=torch.float32))
    assert torch.equal(checkpoint.pruner_z, torch.tensor(PRUNER_PATTERN, dtype=torch.float32))
    assert checkpoint.prune_locations == [1, 3]


def test_mismatching_zs_is_refused(published):
    directory, _ = published
    flipped = torch.tensor(TOKEN_PATTERN, dtype=torch.float32)
    flipped[0, 0] = 0.0
    flipped[0, 1] = 1.0  # same count closed, but a large gate closed and a small one open
    torch.save(
        {"token_z": flipped, "pruner_z": torch.tensor(PRUNER_PATTERN, dtype=torch.float32)}, str(directory / "zs.pt")
    )
    with pytest.raises(UserError) as caught:
        load_checkpoint(directory)
    assert "zs.pt" in str(caught.value) and "l0_module.pt" in str(caught.value)


def test_zs_shape_not_matching_gates_is_refused(published):
    directory, _ = published
    torch.save({"token_z": torch.ones(2, 5), "pruner_z": torch.ones(2)}, str(directory / "zs.pt"))
    with pytest.raises(UserError) as caught:
        load_checkpoint(directory)
    assert "zs.pt" in str(caught.value) and "l0_module.pt" in str(caught.value)


def test_ties_broken_differently_are_accepted_but_a_wrong_choice_is_not(tmp_path):
    # 12 closed gates at the same clamped logit: 12 * 0.953 rounds to 11, so one of the tied gates
    # stays open, and which one depends on topk's tie-breaking (CUDA and CPU may differ).
    row = [0.0] * 12 + [1.0, 1.0]
    token_loga = torch.tensor([[CLOSED] * 12 + [OPEN, OPEN]])
    directory, _ = publish(
        tmp_path, token_pattern=[row], pruner_pattern=[1], locations=[3], zs=False, token_loga=token_loga
    )

    computed = load_checkpoint(directory).token_z[0]
    assert int((computed[:12] == 0).sum()) == 11 and computed[12:].tolist() == [1.0, 1.0]
    other_tie = torch.tensor(row)
    kept = int(torch.nonzero(computed[:12])[0])
    other_tie[(kept + 1) % 12] = 1.0
    torch.save({"token_z": other_tie[None], "pruner_z": torch.ones(1)}, str(directory / "zs.pt"))
    assert torch.equal(load_checkpoint(directory).token_z[0], other_tie)

    wrong = computed.clone()
    wrong[12], wrong[kept] = 0.0, 0.0
    wrong[(kept + 1) % 12] = 1.0  # still 11 closed, but an open-logit gate is among them
    torch.save({"token_z": wrong[None], "pruner_z": torch.ones(1)}, str(directory / "zs.pt"))
    with pytest.raises(UserError, match="zs.pt"):
        load_checkpoint(directory)


def test_prune_locations_fall_back_to_the_last_layers(tmp_path):
    directory, _ = publish(
        tmp_path, token_pattern=TOKEN_PATTERN, pruner_pattern=PRUNER_PATTERN, locations=[1, 3], l0=False
    )
    checkpoint = load_checkpoint(directory)
    assert checkpoint.prune_locations == [2, 3]  # 2 gates on a 4-layer model
    assert checkpoint.gate_state is None
    assert checkpoint.bin_num == 6
    assert torch.equal(checkpoint.pruner_z, torch.tensor(PRUNER_PATTERN, dtype=torch.float32))


def test_too_many_gate_rows_for_the_model_are_refused(tmp_path):
    pattern = [[1, 0, 1]] * 4  # 4 rows cannot sit on layers 1..3 of a 4-layer model
    directory, _ = publish(tmp_path, token_pattern=pattern, pruner_pattern=[1] * 4, locations=[0, 1, 2, 3], l0=False)
    with pytest.raises(UserError, match="zs.pt"):
        load_checkpoint(directory)


def test_dense_checkpoint_has_no_masks(tmp_path):
    directory, _ = publish(
        tmp_path, token_pattern=TOKEN_PATTERN, pruner_pattern=PRUNER_PATTERN, locations=[1, 3], zs=False, l0=False
    )
    checkpoint = load_checkpoint(directory)
    assert checkpoint.token_z is None and checkpoint.pruner_z is None and not checkpoint.is_pruned
    assert checkpoint.prune_locations == [] and checkpoint.gate_state is None and checkpoint.bin_num is None


class _ShellPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


class _ExecPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_ShellPayload, _ExecPayload], ids=["os.system", "exec"])
@pytest.mark.parametrize("file_name", ["l0_module.pt", "zs.pt", "pytorch_model.bin"])
def test_pickled_code_is_refused_and_never_runs(published, tmp_path, payload, file_name):
    directory, _ = published
    marker = tmp_path / "pwned_{}".format(file_name.replace(".", "_"))
    evil = payload(str(marker))
    if file_name == "zs.pt":
        obj = {"token_z": evil, "pruner_z": torch.ones(2)}
    elif file_name == "pytorch_model.bin":
        obj = dict(tiny_state_dict(tiny_config()), evil=evil)
    else:
        obj = evil
    torch.save(obj, str(directory / file_name))

    with pytest.raises(UserError) as caught:
        load_checkpoint(directory)
    assert file_name in str(caught.value) and "disallowed" in str(caught.value)
    assert not marker.exists()


def test_unknown_class_inside_the_gate_module_is_refused(published, tmp_path):
    directory, _ = published
    # A class from an allowed-looking package that is not on the list is refused by name.
    torch.save({"format": GATES_FORMAT, "token_loga": torch.nn.Linear(2, 2)}, str(directory / "l0_module.pt"))
    with pytest.raises(UserError, match=r"l0_module\.pt contains a disallowed object torch\.nn"):
        load_checkpoint(directory)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weights_are_reported(published, damage):
    directory, _ = published
    weights = directory / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x00not a torch file" * 50, "empty": b""}[damage]
    )
    with pytest.raises(UserError) as caught:
        load_checkpoint(directory)
    assert "pytorch_model.bin" in str(caught.value) and "corrupt" in str(caught.value)


def test_missing_pieces_are_reported(tmp_path, published):
    directory, _ = published
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(UserError, match="pytorch_model.bin"):
        load_checkpoint(directory)
    (directory / "config.json").unlink()
    with pytest.raises(UserError, match="config.json"):
        load_checkpoint(directory)


def test_weights_that_are_not_a_state_dict_are_refused(published):
    directory, _ = published
    torch.save([torch.ones(2)], str(directory / "pytorch_model.bin"))
    with pytest.raises(UserError, match="state dict"):
        load_checkpoint(directory)


def _tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    return BertTokenizer(str(vocab))


def test_save_and_load_round_trip(tmp_path):
    config = tiny_config()
    state_dict = tiny_state_dict(config)
    gate_state = {
        "token_loga": logits_for(TOKEN_PATTERN).requires_grad_(),
        "pruner_loga": logits_for(PRUNER_PATTERN),
        "lambda_1": torch.tensor(0.5),
        "lambda_2": torch.tensor(-2.0),
        "prune_locations": [1, 2],
        "temperature": 0.5,
        "magical_number": 0.9,
    }
    target = tmp_path / "out"
    save_checkpoint(
        target,
        model_state_dict=state_dict,
        config=config,
        token_z=None,
        pruner_z=None,
        gate_state=gate_state,
        tokenizer=_tokenizer(tmp_path),
        extra={"trainer_state.json": {"step": 7}},
    )
    checkpoint = load_checkpoint(target)
    assert checkpoint.prune_locations == [1, 2]
    assert checkpoint.temperature == 0.5 and checkpoint.magical_number == pytest.approx(0.9)
    assert torch.equal(checkpoint.token_z, torch.tensor(TOKEN_PATTERN, dtype=torch.float32))
    assert torch.equal(checkpoint.gate_state["token_loga"], gate_state["token_loga"].detach())
    assert checkpoint.gate_state["lambda_2"].item() == -2.0
    assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in state_dict.items())
    assert json.loads((target / "trainer_state.json").read_text()) == {"step": 7}
    assert BertTokenizer.from_pretrained(str(target)).convert_tokens_to_ids("b") == 6

    if "weights_only" in __import__("inspect").signature(torch.load).parameters:
        raw = torch.load(str(target / "l0_module.pt"), weights_only=True)  # a plain dict, no classes
        # l0_module.pt holds the one gate-state dict: what TokenGates and PrunedCheckpoint.gate_state hold.
        assert raw["format"] == GATES_FORMAT and raw["prune_locations"] == [1, 2]
        assert sorted(raw) == sorted(checkpoint.gate_state) == sorted(TokenGates([1], 2).state_for_checkpoint())
        assert all(torch.equal(raw[k], v) if torch.is_tensor(v) else raw[k] == v
                   for k, v in checkpoint.gate_state.items())

    # Saving again replaces the directory whole: stale extra files do not survive.
    save_checkpoint(target, model_state_dict=state_dict, config=config, token_z=None, pruner_z=None, gate_state=None)
    assert not (target / "trainer_state.json").exists()
    assert load_checkpoint(target).token_z is None


def test_gate_files_of_earlier_versions_are_read(published):
    directory, gates = published
    # Before the one gate-state format, our l0_module.pt held the locations under token_prune_loc.
    old = {"format": GATES_FORMAT, "token_loga": gates["token_loga"], "pruner_loga": gates["pruner_loga"],
           "lambda_1": torch.tensor(0.25), "lambda_2": torch.tensor(-1.5), "token_prune_loc": [1, 3], "bin_num": 6,
           "temperature": 2.0 / 3.0, "magical_number": 0.8}
    torch.save(old, str(directory / "l0_module.pt"))
    checkpoint = load_checkpoint(directory)
    assert checkpoint.prune_locations == checkpoint.gate_state["prune_locations"] == [1, 3]
    assert "token_prune_loc" not in checkpoint.gate_state
    assert torch.equal(checkpoint.token_z, torch.tensor(TOKEN_PATTERN, dtype=torch.float32))


def test_bad_prune_locations_in_a_gate_file_are_refused(published):
    directory, gates = published
    bad = dict(gates, format=GATES_FORMAT, prune_locations=[1, 4])  # layer 4 of a 4-layer model
    torch.save(bad, str(directory / "l0_module.pt"))
    with pytest.raises(UserError, match=r"Prune locations \[1, 4\] from \S*l0_module\.pt .*download or save"):
        load_checkpoint(directory)


def test_save_refuses_masks_that_disagree_with_the_gates(tmp_path):
    config = tiny_config()
    gate_state = {"token_loga": logits_for(TOKEN_PATTERN), "pruner_loga": logits_for(PRUNER_PATTERN)}
    wrong = 1 - torch.tensor(TOKEN_PATTERN, dtype=torch.float32)
    with pytest.raises(ValueError, match="token_z"):
        save_checkpoint(
            tmp_path / "out",
            model_state_dict={},
            config=config,
            token_z=wrong,
            pruner_z=torch.tensor(PRUNER_PATTERN, dtype=torch.float32),
            gate_state=gate_state,
        )
    assert not (tmp_path / "out").exists()


def test_safetensors_weights(published):
    import safetensors.torch as safetensors_torch

    directory, _ = published
    state = {k: v.contiguous() for k, v in tiny_state_dict(tiny_config()).items()}
    (directory / "pytorch_model.bin").unlink()
    safetensors_torch.save_file(state, str(directory / "model.safetensors"))
    checkpoint = load_checkpoint(directory)
    assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in state.items())

    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        load_checkpoint(directory)


def test_loading_does_not_modify_the_directory(published):
    directory, _ = published
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    load_checkpoint(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert Path(directory).is_dir()


# ----------------------------------------------------------------------------------------------
# manifest.json: what top writes carries the sha256 of every file, checked on load


def test_saved_checkpoint_lists_every_file_in_its_manifest(tmp_path):
    from builders import tiny_checkpoint

    from top.storage.io import sha256_of
    from top.storage.manifest import MANIFEST_FILE, read_manifest

    path = tiny_checkpoint(tmp_path / "ckpt")
    files = read_manifest(path)
    on_disk = {p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST_FILE}
    assert set(files) == on_disk and {"config.json", "model.safetensors", "zs.pt", "l0_module.pt"} <= on_disk
    for name, entry in files.items():
        assert entry == {"size": (path / name).stat().st_size, "sha256": sha256_of(path / name)}


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "zs.pt", "l0_module.pt", "vocab.txt"])
def test_a_damaged_file_of_a_saved_checkpoint_is_named(tmp_path, name):
    """One flipped byte anywhere (safetensors and tokenizer files carry no checksum of their own) is refused."""
    from builders import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "ckpt")
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{name} does not match the sha256 .* so it was damaged"):
        load_checkpoint(path)


def test_checkpoint_without_manifest_reads_as_before(tmp_path):
    from builders import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "ckpt")
    before = load_checkpoint(path)
    (path / "manifest.json").unlink()
    after = load_checkpoint(path)
    assert all(torch.equal(before.state_dict[k], after.state_dict[k]) for k in before.state_dict)
    assert torch.equal(before.token_z, after.token_z)


def test_a_file_the_manifest_lists_must_be_there(tmp_path):
    from builders import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "ckpt")
    (path / "vocab.txt").unlink()
    with pytest.raises(UserError, match="vocab.txt is missing, though .*manifest.json lists it"):
        load_checkpoint(path)


def test_stride_zero_tensor_is_refused_before_anything_is_allocated(tmp_path):
    """4 bytes on disk declared as 2**40 floats: refused by the reader, no 4 TiB copy is attempted."""
    from top.storage.safeload import read_torch_file

    torch.save({"token_z": torch.ones(1).expand(1, 2**40)}, str(tmp_path / "zs.pt"))
    with pytest.raises(UserError, match=r"zs\.pt .*needs more than the 1 elements its storage holds"):
        read_torch_file(tmp_path / "zs.pt")
    # an expanded view that stays within its storage (HF's position_ids buffer) is still read
    torch.save({"position_ids": torch.arange(8).expand(1, -1)}, str(tmp_path / "ok.pt"))
    assert read_torch_file(tmp_path / "ok.pt")["position_ids"].tolist() == [list(range(8))]


def test_compressed_zip_member_is_refused(tmp_path):
    import zipfile

    torch.save({"token_z": torch.ones(2, 3)}, str(tmp_path / "plain.pt"))
    with zipfile.ZipFile(str(tmp_path / "plain.pt")) as archive:
        members = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(str(tmp_path / "deflated.pt"), "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    from top.storage.safeload import read_torch_file

    assert torch.equal(read_torch_file(tmp_path / "plain.pt")["token_z"], torch.ones(2, 3))
    with pytest.raises(UserError, match="compressed"):
        read_torch_file(tmp_path / "deflated.pt")


def test_legacy_storage_larger_than_the_file_is_refused_before_torch_allocates_it(tmp_path):
    """torch's pre-zip loader allocates each storage at the size the pickle declares; that size is checked first."""
    from top.storage.safeload import read_torch_file

    file = tmp_path / "legacy.pt"
    torch.save({"token_z": torch.ones(4)}, str(file), _use_new_zipfile_serialization=False)
    data = file.read_bytes()
    # the storage's element count (4) as pickled: BININT1 4 right before the view metadata (None)
    assert data.count(b"K\x04N") == 1
    file.write_bytes(data.replace(b"K\x04N", b"J" + (2**30).to_bytes(4, "little") + b"N"))
    with pytest.raises(UserError, match="declared in a file of"):
        read_torch_file(file)
