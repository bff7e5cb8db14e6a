"""Issue 27, "Nothing lost on the command line": the `ddnn` command with files and folders
that cannot be what it needs (a folder where a file goes, a file where a folder goes, a
place nothing can be written, a corrupt file) and settings the data would replace unseen.
Each ends in one line `error: ...` (exit status 2), before any work that would be lost, and
an export never mixes with other files unasked.

Most commands run in this process through `ddnn.cli.main`, the `ddnn` entry point itself
(it turns errors into that one line), to keep the tests fast; two run as real subprocesses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ddnn.cli import main
from ddnn.core.config import FittedSettingError, load_config
from ddnn.core.errors import ConfigError
from ddnn.data import save_mvmc
from tests.helpers import ddnn, make_mvmc_arrays

UNWRITABLE = "/proc/ddnn-test"  # a place nothing can be created in, even as root


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple:
    """`ddnn ARGS` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ddnn", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def one_line_error(result: tuple, *phrases: str) -> str:
    """The error line of a command that must have failed with one (naming `phrases`)."""
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A small six-view data file, a model trained on it for one epoch, a regular file (to
    stand where a folder goes) and a corrupt file."""
    tmp = tmp_path_factory.mktemp("files")
    data = tmp / "d.npz"
    save_mvmc(data, *make_mvmc_arrays(60))
    model = tmp / "m.pt"
    ddnn("train", "--data", f"mvmc:{data}", "--out", str(model), "--epochs", "1", "--json")
    (tmp / "a-file").write_text("not a folder\n")
    (tmp / "junk").write_bytes(bytes(range(256)) * 4)
    return {"data": data, "model": model, "file": tmp / "a-file", "junk": tmp / "junk"}


# ------------------------------------------------------------------------------ export


def test_export_refuses_a_folder_of_other_files_and_force_deletes_none(
    files, tmp_path, monkeypatch, capsys
):
    """`ddnn export --out /etc` wrote its artifacts and an access/ folder among the
    system's files without a word."""
    model = str(files["model"])
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "passwd").write_text("root:x:0:0\n")
    (folder / "cloud.npz").write_text("someone else's file of an artifact's name\n")
    result = run(monkeypatch, capsys, "export", "--model", model, "--out", str(folder))
    one_line_error(result, str(folder), "not empty", "no earlier export", "--force")
    assert sorted(p.name for p in folder.iterdir()) == ["cloud.npz", "passwd"]
    assert (folder / "cloud.npz").read_text().startswith("someone else's")

    code, _, err = run(monkeypatch, capsys, "export", "--model", model, "--out", str(folder),
                       "--force")  # fmt: skip
    assert code == 0, err
    assert (folder / "passwd").read_text() == "root:x:0:0\n"  # other files are kept
    assert (folder / "manifest.json").is_file() and (folder / "access").is_dir()
    assert (folder / "cloud.npz").read_bytes().startswith(b"PK")  # the export's own replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (folder, empty, empty, tmp_path / "new" / "deploy"):  # an earlier export too
        code, _, err = run(monkeypatch, capsys, "export", "--model", model, "--out", str(out))
        assert code == 0, err
        assert json.loads((out / "manifest.json").read_text())["artifacts"]


def test_export_into_a_file_or_an_unwritable_place_is_one_line(files, monkeypatch, capsys):
    model = str(files["model"])
    for out, why in (
        (files["file"], "it is a file, not a folder"),
        (files["file"] / "deploy", "a file stands where its path needs a folder"),
        (Path(UNWRITABLE), UNWRITABLE),
    ):
        result = run(monkeypatch, capsys, "export", "--model", model, "--out", str(out))
        one_line_error(result, str(out), why)


def test_export_of_an_export_folder_says_it_wants_a_model_file(
    files, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "deploy"
    run(monkeypatch, capsys, "export", "--model", str(files["model"]), "--out", str(out))
    result = run(monkeypatch, capsys, "export", "--model", str(out), "--out", str(tmp_path / "b"))
    one_line_error(result, f"{out} is a folder, not a model file")


# ------------------------------------------------------- settings the data would replace


SIX_VIEWS = {"n_devices": 6, "input_shape": (3, 32, 32), "classes": ["car", "bus", "person"]}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.n_devices=4", "model.n_devices=4 but cams has 6 views"),
        ("model.input_shape=[3, 16, 16]", "but cams has views of shape 3x32x32"),
        ("model.classes=[cat, dog]", "but cams has the classes car, bus, person"),
    ],
)
def test_a_setting_the_data_decides_otherwise_is_refused_by_name(setting, message, tmp_path):
    """`--set model.n_devices=4` on six-view data trained six devices without a word."""
    with pytest.raises(FittedSettingError, match=message):
        load_config(None, [setting], SIX_VIEWS, "cams")
    key, _, value = setting.partition("=")
    section, name = key.split(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(FittedSettingError, match=message):  # from a config file alike
        load_config(path, [], SIX_VIEWS, "cams")


def test_no_number_of_devices_is_a_config_error_and_agreeing_settings_stay_allowed():
    """`--set model.n_devices=abc` trained six devices too, without a word."""
    with pytest.raises(ConfigError, match="model.n_devices: Input should be a valid integer"):
        load_config(None, ["model.n_devices=abc"], SIX_VIEWS, "cams")
    nine = {**SIX_VIEWS, "n_devices": 9}
    assert load_config(None, [], nine, "cams").model.n_devices == 9  # the default: the data's
    agreeing = ["model.n_devices=6", "model.input_shape=[3, 32, 32]", "model.classes=[car, bus]"]
    cfg = load_config(None, agreeing, {**SIX_VIEWS, "classes": ["car", "bus"]}, "cams")
    assert (cfg.model.n_devices, cfg.model.classes) == (6, ["car", "bus"])
    assert load_config(None, ["model.n_devices=4"]).model.n_devices == 4  # no data: as said


def test_train_refuses_a_device_count_the_data_overrides(files, monkeypatch, capsys):
    data = f"mvmc:{files['data']}"
    out = str(files["file"].parent / "never.pt")
    result = run(monkeypatch, capsys, "train", "--data", data, "--set", "model.n_devices=4",
                 "--out", out)  # fmt: skip
    one_line_error(result, f"model.n_devices=4 but {data} has 6 views")
    result = run(monkeypatch, capsys, "train", "--data", data, "--set", "model.n_devices=abc",
                 "--out", out)  # fmt: skip
    one_line_error(result, "model.n_devices: Input should be a valid integer")
    assert not Path(out).exists()


# ----------------------------------------------------------- outputs that cannot be written


def test_report_out_that_cannot_be_created_is_one_line(files):
    """It ended in a traceback (a real subprocess: what a person sees)."""
    for out in (files["file"] / "report", Path(UNWRITABLE)):
        proc = ddnn("report", "--quick", "--out", str(out), check=False, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: cannot create the report folder {out}: "
            + ("a file stands where its path needs a folder" if out != Path(UNWRITABLE)
               else "No such file or directory")
        ]  # fmt: skip


def test_output_files_that_cannot_be_written_are_refused_before_the_work(
    files, tmp_path, monkeypatch, capsys
):
    """Each of these was a traceback, the model file's after the whole training run."""
    data, model = f"mvmc:{files['data']}", str(files["model"])
    folder, under_a_file = tmp_path, files["file"] / "x"
    cases = [
        (["train", "--data", data, "--out", str(folder)], "model file", "it is a folder"),
        (["train", "--data", data, "--out", str(under_a_file)], "", "is a file, not a folder"),
        (["train", "--data", data, "--out", f"{UNWRITABLE}/m.pt"], "", UNWRITABLE),
        (["eval", "--model", model, "--decisions", str(folder)], "decisions file", "a folder"),
        (["eval", "--model", model, "--decisions", str(under_a_file)], "", "not a folder"),
        (["data", "synth", "--samples", "2", "--out", str(folder)], "data file", "a folder"),
        (["asyncapi", "--out", str(under_a_file)], str(under_a_file), "needs a folder"),
        (["asyncapi", "--out", str(folder)], str(folder), "it is a folder, not a file"),
        (["results", "--workdir", str(under_a_file)], "--workdir", "needs a folder"),
        (["demo", "--plot", str(under_a_file)], "--plot folder", "needs a folder"),
        (["faults", "--plot", str(files["file"])], "--plot folder", "not a folder"),
    ]
    for args, *phrases in cases:  # one line: no progress of work done before it either
        one_line_error(run(monkeypatch, capsys, *args), *phrases)


def test_corrupt_or_misplaced_inputs_are_one_line(files, tmp_path, monkeypatch, capsys):
    junk, model = str(files["junk"]), str(files["model"])
    line = one_line_error(run(monkeypatch, capsys, "eval", "--model", junk), junk)
    assert "weights_only" not in line  # torch's advice to load it unsafely is not ours
    one_line_error(run(monkeypatch, capsys, "config", "--config", junk), f"config {junk}")
    result = run(monkeypatch, capsys, "report", "--quick", "--out", str(tmp_path / "r"),
                 "--data", f"mvmc:{files['data']}", "--live", junk)  # fmt: skip
    one_line_error(result, junk, "is not JSON")
    deploy = tmp_path / "deploy"
    run(monkeypatch, capsys, "export", "--model", model, "--out", str(deploy))
    (deploy / "device-0.npz").unlink()
    (deploy / "device-0.npz").mkdir()  # a folder where an artifact goes
    result = run(monkeypatch, capsys, "eval", "--model", str(deploy))
    one_line_error(result, "device-0.npz", "it is a folder, not a file")


def test_faults_checks_its_comparison_model_before_any_scenario(files):
    proc = ddnn("faults", "--scenario", "dropout", "--compare-model", str(files["junk"]),
                "--json", check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {files['junk']} is not a readable DDNN model file: not plain saved tensors "
        f"and containers ({proc.stderr.split('(')[-1].strip()}"
    ]
