"""The reproduction recipes (examples/translation/*-wmt14.sh, examples/language_model/*-wikitext103.sh).

Their smoke mode end to end on the committed fixtures (laid out like the real
raw data), the scoring against hand-worked BLEU, checkpoint averaging against
averaged tensors, the launch plan (GPUs x update-freq, torchrun, SLURM) and
the errors a user meets first: a missing raw file, --fp16 without a GPU, an
output directory that would be overwritten.
"""

import argparse
import collections
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from examples import recipe_launch as launch
from examples.translation import average_checkpoints as avg
from examples.translation import clean_corpus
from examples.translation import score_generate as sg
from examples.translation import sgm
from examples.translation import wmt14_corpora
from tests.conftest import on_a_free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
TRANSLATION = os.path.join(EXAMPLES, "translation")
LM = os.path.join(EXAMPLES, "language_model")
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def run_script(script, *args, cwd, timeout=300, **env_extra):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("SMOKE", "FORCE", "RESUME", "DRY_RUN", "UPDATE_FREQ", "NNODES", "NPROC_PER_NODE",
                "WORK", "OUT", "DATA_BIN", "SAVE_DIR", "RESULTS", "VALID", "RUNS", "MODELS"):
        env.pop(key, None)
    env.update({k: str(v) for k, v in env_extra.items()})
    return subprocess.run(["bash", script, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


# ---------------------------------------------------------------- scoring


def test_compound_split_is_perls_left_to_right_substitution():
    cs = sg.compound_split
    assert cs("a well-known fact") == "a well ##AT##-##AT## known fact"
    # Moses' aggressive hyphen split leaves "@-@", which the rule splits too
    assert cs("a well @-@ known fact") == "a well @ ##AT##-##AT## @ known fact"
    # non-overlapping, as Perl's s///g: the second hyphen of a-b-c has lost its left neighbour
    assert cs("a-b-c") == "a ##AT##-##AT## b-c"
    assert cs("- x - y -") == "- x - y -"
    assert cs("") == ""


def test_compound_split_bleu_matches_a_hand_worked_example():
    hyp = ["the cat sat on the well-known mat"]
    ref = ["the cat sat on the well-known red mat"]
    # split: hyp "the cat sat on the well ##AT##-##AT## known mat" (9 tokens),
    #        ref "the cat sat on the well ##AT##-##AT## known red mat" (10 tokens)
    # n-gram precisions 9/9, 7/8 ("known mat" unmatched), 6/7, 5/6; brevity penalty exp(1 - 10/9)
    expected = 100 * math.exp(1 - 10 / 9) * (1 * 7 / 8 * 6 / 7 * 5 / 6) ** 0.25
    score = sg.compound_split_bleu(hyp, ref)
    assert score.score == pytest.approx(expected, abs=1e-9)
    assert (score.sys_len, score.ref_len) == (9, 10)
    # without the split: 7 and 8 tokens, precisions 7/7, 5/6, 4/5, 3/4
    plain = sg.tokenized_bleu(hyp, ref)
    assert plain.score == pytest.approx(100 * math.exp(1 - 8 / 7) * (5 / 6 * 4 / 5 * 3 / 4) ** 0.25, abs=1e-9)

    # and the same number as fairseq-score (fairseq's multi-bleu.perl port) on the split text
    from fairseq.data import dictionary
    from fairseq.scoring import bleu

    d = dictionary.Dictionary()
    scorer = bleu.Scorer(bleu.BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
    for h, r in zip(hyp, ref):
        scorer.add(d.encode_line(sg.compound_split(r), add_if_not_exist=True),
                   d.encode_line(sg.compound_split(h), add_if_not_exist=True))
    assert scorer.score() == pytest.approx(expected, abs=1e-4)


def test_tokenised_bleu_is_not_smoothed():
    # no matching 4-gram anywhere: multi-bleu.perl (and fairseq-score) give 0
    assert sg.tokenized_bleu(["a b c d e"], ["a b c x e"]).score == 0.0


def test_generate_output_is_read_by_sentence_id(tmp_path):
    gen = tmp_path / "generate-test.txt"
    gen.write_text(
        "S-1\tb src\nT-1\tref one\nH-1\t-0.5\thyp one\nD-1\t-0.5\thyp one\nP-1\t-0.1 -0.2\n"
        "S-0\ta src\nT-0\tref zero\nH-0\t-0.3\t\nD-0\t-0.3\t\n"
        "Generate test with beam=4: BLEU4 = 1.00, ...\n",
        encoding="utf-8",
    )
    assert sg.read_generate_output(str(gen)) == (["", "hyp one"], ["ref zero", "ref one"])
    gen.write_text("T-0\tr\nH-0\t-1\th\nT-2\tr\nH-2\t-1\th\n", encoding="utf-8")
    with pytest.raises(sg.ScoreError, match=r"sentence ids \[1\] were not translated"):
        sg.read_generate_output(str(gen))


def test_detokenised_sacrebleu_has_its_signature():
    from examples.translation.moses_text import detokenizer

    detok = detokenizer("de")
    hyp = detok("Die langfristige Vorhersage sagt weitere , starke Winde &amp; Ost @-@ Wetter voraus .")
    assert hyp == "Die langfristige Vorhersage sagt weitere, starke Winde & Ost-Wetter voraus."
    score, signature = sg.detok_sacrebleu([hyp], [hyp])
    assert score.score == pytest.approx(100.0)
    assert "tok:13a" in signature and "nrefs:1" in signature


# ---------------------------------------------------------------- text processing


def test_sgm_extraction_fairseq_and_sacrebleu_ways():
    ref = os.path.join(FIXTURES, "wmt14", "test-full", "newstest2014-deen-ref.de.sgm")
    src = os.path.join(FIXTURES, "wmt14", "test-full", "newstest2014-deen-src.en.sgm")
    assert len(sgm.fairseq_segments(ref)) == len(sgm.sacrebleu_segments(ref)) == 10
    fs, sb = sgm.fairseq_segments(src), sgm.sacrebleu_segments(src)
    assert sb[3].startswith("“We’re very grateful")  # sacrebleu keeps the text as is
    assert fs[3].startswith("“We're very grateful")  # fairseq's sed turns ’ into '


def test_clean_corpus_follows_clean_corpus_n():
    assert clean_corpus.clean_line("  a |b\t\tc  ") == "a b c"
    keep = clean_corpus.keep
    assert keep("a b c", "x y", 1, 250, 1.5)
    assert not keep("a b c d", "x y", 1, 250, 1.5)  # ratio 2 > 1.5
    assert not keep("", "x", 1, 250, 1.5) and not keep("a", "", 1, 250, None)
    assert not keep(" ".join("a" * 251), " ".join("b" * 251), 1, 250, 1.5)
    assert keep(" ".join("a" * 250), " ".join("b" * 250), 1, 250, 1.5)


def test_missing_raw_files_are_named_with_their_tarball(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(os.path.join(FIXTURES, "wmt14"), raw)
    os.remove(raw / "commoncrawl.de-en.de")
    with pytest.raises(wmt14_corpora.CorpusError) as err:
        wmt14_corpora.locate(str(raw), "en-de")
    assert "commoncrawl.de-en.de (from training-parallel-commoncrawl.tgz)" in str(err.value)
    assert "europarl" not in str(err.value)

    out = tmp_path / "out"
    proc = run_script(os.path.join(TRANSLATION, "prepare-wmt14.sh"), "en-de", raw, cwd=tmp_path,
                      SMOKE=1, OUT=out, DATA_BIN=tmp_path / "bin")
    assert proc.returncode == 2
    assert f"{raw}/commoncrawl.de-en.de (from training-parallel-commoncrawl.tgz)" in proc.stderr
    assert not out.exists() and not (tmp_path / "bin").exists()


def test_misaligned_corpus_is_named(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(os.path.join(FIXTURES, "wmt14"), raw)
    with open(raw / "commoncrawl.de-en.de", "a", encoding="utf-8") as f:
        f.write("Eine Zeile zu viel.\n")
    proc = run_script(os.path.join(TRANSLATION, "prepare-wmt14.sh"), "en-de", raw, cwd=tmp_path,
                      SMOKE=1, OUT=tmp_path / "out", DATA_BIN=tmp_path / "bin")
    assert proc.returncode == 2
    assert (f"misaligned corpus: {raw}/commoncrawl.de-en.en has 20 lines but "
            f"{raw}/commoncrawl.de-en.de has 21") in proc.stderr


def test_existing_output_directory_is_refused_unless_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.en").write_text("precious\n")
    proc = run_script(os.path.join(TRANSLATION, "prepare-wmt14.sh"), "en-de",
                      os.path.join(FIXTURES, "wmt14"), cwd=tmp_path, SMOKE=1, OUT=out,
                      DATA_BIN=tmp_path / "bin")
    assert proc.returncode == 2
    assert f"output directory {out} already exists" in proc.stderr and "FORCE=1" in proc.stderr
    assert (out / "train.en").read_text() == "precious\n"


def test_wikitext_missing_file_is_named(tmp_path):
    raw = tmp_path / "wikitext-103"
    shutil.copytree(os.path.join(FIXTURES, "wikitext-103"), raw)
    os.remove(raw / "wiki.valid.tokens")
    proc = run_script(os.path.join(LM, "prepare-wikitext103.sh"), raw, cwd=tmp_path, SMOKE=1)
    assert proc.returncode == 2
    assert f"missing file: {raw}/wiki.valid.tokens" in proc.stderr
    assert not (tmp_path / "data-bin").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_fp16_without_a_gpu_is_refused_before_training(tmp_path):
    data = tmp_path / "bin"
    data.mkdir()
    (data / "dict.en.txt").write_text("")
    (data / "dict.txt").write_text("")
    for script, args in ((os.path.join(TRANSLATION, "train-wmt14.sh"), ("en-de", "rdrop")),
                         (os.path.join(LM, "train-wikitext103.sh"), ("adaptive", "rdrop"))):
        proc = run_script(script, *args, cwd=tmp_path, DATA_BIN=data, SAVE_DIR=tmp_path / "ckpt")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--fp16 asks for CUDA mixed precision, but no CUDA GPU is visible" in proc.stderr
        assert "SMOKE=1" in proc.stderr
        assert not (tmp_path / "ckpt").exists()
    # DRY_RUN shows the 8-GPU command anyway (e.g. on a login node without GPUs)
    proc = ok(run_script(os.path.join(TRANSLATION, "train-wmt14.sh"), "en-de", "rdrop", cwd=tmp_path,
                         DATA_BIN=data, DRY_RUN=1, NPROC_PER_NODE=8))
    command = proc.stdout.strip().splitlines()[-1]
    assert command.split()[1:8] == ["-m", "torch.distributed.run", "--nproc-per-node", "8", "--standalone",
                                    "--no-python", os.path.join(os.path.dirname(sys.executable), "rdrop-train")]
    for flags in ("--arch transformer_vaswani_wmt_en_de_big --share-all-embeddings",
                  "--dropout 0.1 --attention-dropout 0.1 --activation-dropout 0.1",
                  "--optimizer adam --adam-betas '(0.9, 0.98)'",
                  "--lr 0.001 --lr-scheduler inverse_sqrt --warmup-updates 6000 --warmup-init-lr 1e-07",
                  "--label-smoothing 0.1 --max-tokens 4096 --max-update 300000",
                  "--criterion rdrop_label_smoothed_cross_entropy --rdrop-alpha 5 --fp16 --update-freq 2"):
        assert flags in command, flags
    assert "this command would fail here" in proc.stdout


# ---------------------------------------------------------------- launch plan


@pytest.mark.parametrize(
    "nnodes, nproc, update_freq",
    [(1, 1, 16), (1, 2, 8), (1, 4, 4), (1, 8, 2), (2, 8, 1), (2, 4, 2), (4, 4, 1)],
)
def test_update_freq_keeps_gpus_times_update_freq_at_16(nnodes, nproc, update_freq):
    env = {"NNODES": str(nnodes), "NPROC_PER_NODE": str(nproc), "NODE_RANK": "0", "MASTER_ADDR": "node0"}
    p = launch.plan(["data", "--fp16"], env, gpus=8, target=16, python="PY", rdrop_train="RT")
    assert p.world_size * p.update_freq == 16 and p.update_freq == update_freq
    assert p.command[-2:] == ["--update-freq", str(update_freq)]
    if nnodes * nproc == 1:
        assert p.command[0] == "RT"
    elif nnodes == 1:
        assert p.command[:7] == ["PY", "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                                 "--standalone", "--no-python"]
    else:
        assert "--nnodes" in p.command and "--master-addr" in p.command and "node0" in p.command
        assert p.command[p.command.index("--no-python") + 1] == "RT"


def test_update_freq_errors_and_override():
    with pytest.raises(launch.LaunchError, match=r"3 training processes cannot keep GPUs x update-freq = 16"):
        launch.plan(["d"], {"NPROC_PER_NODE": "3"}, gpus=4, target=16)
    with pytest.raises(launch.LaunchError, match=r"32 training processes.*lower --max-tokens"):
        launch.plan(["d"], {"NNODES": "4", "NPROC_PER_NODE": "8", "MASTER_ADDR": "h"}, gpus=8, target=16)
    p = launch.plan(["d"], {"NPROC_PER_NODE": "3", "UPDATE_FREQ": "5"}, gpus=4, target=16)
    assert p.update_freq == 5 and any("3 GPU(s) x 5 = 15, not the recipe's 16" in n for n in p.notes)
    with pytest.raises(launch.LaunchError, match="set UPDATE_FREQ"):
        launch.plan(["d", "--update-freq", "2"], {}, gpus=1, target=16)
    with pytest.raises(launch.LaunchError, match="needs MASTER_ADDR"):
        launch.plan(["d"], {"NNODES": "2"}, gpus=8, target=16)
    with pytest.raises(launch.LaunchError, match="NODE_RANK=2 must be in 0..1"):
        launch.plan(["d"], {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, gpus=8, target=16)
    with pytest.raises(launch.LaunchError, match="4 GPU"):
        launch.plan(["d"], {"NPROC_PER_NODE": "8"}, gpus=4, target=16)


def test_mixed_precision_needs_a_gpu_and_cpu_defaults_to_one_process():
    for flag in ("--fp16", "--amp", "--memory-efficient-fp16"):
        with pytest.raises(launch.LaunchError, match=f"{flag} asks for CUDA mixed precision.*SMOKE=1"):
            launch.plan(["d", flag], {}, gpus=0, target=16)
    p = launch.plan(["d", "--bf16"], {}, gpus=0, target=24, rdrop_train="RT")
    assert p.command == ["RT", "d", "--bf16", "--update-freq", "24"] and p.world_size == 1


def test_processes_started_by_torchrun_or_srun_run_rdrop_train_directly():
    env = {"WORLD_SIZE": "4", "RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "1", "NPROC_PER_NODE": "8"}
    p = launch.plan(["d"], env, gpus=1, target=16, rdrop_train="RT")
    assert p.command == ["RT", "d", "--update-freq", "4"] and p.rank == 3
    slurm = {"SLURM_NTASKS": "16", "SLURM_PROCID": "5", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8"}
    p = launch.plan(["d"], slurm, gpus=8, target=16, rdrop_train="RT")
    assert p.command == ["RT", "d", "--update-freq", "1"] and p.world_size == 16
    one_task_per_node = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_NNODES": "2",
                         "SLURM_NTASKS_PER_NODE": "1"}
    p = launch.plan(["d"], one_task_per_node, gpus=4, target=16, rdrop_train="RT")
    assert p.world_size == 8 and p.update_freq == 2 and p.rank == 4


def test_save_dir_with_checkpoints_needs_resume_or_force(tmp_path):
    said = []
    save = tmp_path / "ckpt"
    launch.claim_save_dir(str(save), {}, 0, said.append)  # absent: fine
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes(b"x")
    with pytest.raises(launch.LaunchError, match="RESUME=1 to continue.*FORCE=1"):
        launch.claim_save_dir(str(save), {}, 0, said.append)
    launch.claim_save_dir(str(save), {}, 1, said.append)  # only rank 0 decides
    launch.claim_save_dir(str(save), {"RESUME": "1"}, 0, said.append)
    assert save.exists()
    launch.claim_save_dir(str(save), {"FORCE": "1"}, 0, said.append)
    assert not save.exists()


# ---------------------------------------------------------------- checkpoint averaging


def fake_checkpoint(path, seed, epoch, shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(shape, generator=g)
    model = collections.OrderedDict(
        [
            ("encoder.embed_tokens.weight", emb),
            ("decoder.embed_tokens.weight", emb),  # shared, as with --share-all-embeddings
            ("decoder.layer.weight", torch.randn(5, generator=g).half()),
            ("decoder.version", torch.tensor([3 + seed])),
        ]
    )
    state = {
        "args": argparse.Namespace(arch="transformer", seed=seed),
        "model": model,
        "optimizer_history": [{"num_updates": 10 * epoch}],
        "extra_state": {"train_iterator": {"epoch": epoch}},
    }
    torch.save(state, path)
    return model


def test_average_checkpoints_is_the_mean_of_the_model_tensors(tmp_path):
    models = {e: fake_checkpoint(tmp_path / f"checkpoint{e}.pt", seed=e, epoch=e) for e in (2, 9, 10, 11)}
    out = tmp_path / "avg.pt"
    assert avg.main(["--inputs", str(tmp_path), "--num-epoch-checkpoints", "3",
                     "--checkpoint-upper-bound", "10", "--output", str(out)]) == 0
    state = torch.load(out, weights_only=True)  # loadable by the weights-only loader
    used = [10, 9, 2]  # newest first; 11 is above the upper bound
    for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.layer.weight"):
        expected = sum(models[e][k].double() for e in used) / 3
        assert state["model"][k].dtype == torch.float32
        torch.testing.assert_close(state["model"][k].double(), expected, rtol=0, atol=1e-6)
    assert state["model"]["decoder.version"].tolist() == [(13 + 12 + 5) // 3]
    # everything else is the first (newest) checkpoint's
    assert state["args"] == argparse.Namespace(arch="transformer", seed=10)
    assert state["extra_state"]["train_iterator"]["epoch"] == 10
    assert avg.last_n_checkpoints(str(tmp_path), 2) == [str(tmp_path / "checkpoint11.pt"),
                                                          str(tmp_path / "checkpoint10.pt")]


def test_average_checkpoints_errors_name_the_file(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint1.pt", seed=1, epoch=1)
    fake_checkpoint(tmp_path / "checkpoint2.pt", seed=2, epoch=2, shape=(4, 4))
    with pytest.raises(avg.AverageError, match=r"checkpoint2\.pt: parameter encoder.embed_tokens.weight has shape \(4, 4\)"):
        avg.average_checkpoints([str(tmp_path / "checkpoint1.pt"), str(tmp_path / "checkpoint2.pt")])
    with pytest.raises(avg.AverageError, match=r"holds 2 epoch checkpoint\(s\) .* but 5 are to be averaged"):
        avg.last_n_checkpoints(str(tmp_path), 5)
    torch.save({"model": {}, "x": object()}, tmp_path / "unsafe.pt")
    with pytest.raises(avg.AverageError, match="cannot load .*unsafe.pt with torch's weights-only loader"):
        avg.load_checkpoint(str(tmp_path / "unsafe.pt"))


# ---------------------------------------------------------------- smoke runs


@pytest.fixture(scope="module")
def wmt14_en_de_smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke") / "wmt14-en-de"
    proc = ok(run_script(os.path.join(TRANSLATION, "run-wmt14.sh"), "en-de", cwd=REPO, SMOKE=1, WORK=work))
    return work, proc


def test_wmt14_en_de_smoke_runs_the_whole_recipe(wmt14_en_de_smoke):
    work, proc = wmt14_en_de_smoke
    out = proc.stdout
    for step in ("pre-processing train data", "splitting train and valid (every 10th line",
                 "learning 400 joint BPE merges", "cleaning train and valid", "binarising",
                 "averaging the last 2 epoch checkpoints", "translating newstest2014 (beam 4, lenpen 0.6)",
                 "tokenised BLEU, compound split (10 sentences)", "detokenised sacreBLEU"):
        assert step in out, step
    data = work / "data-bin" / "wmt14_en_de"
    for name in ("dict.en.txt", "dict.de.txt", "train.en-de.en.bin", "valid.en-de.de.idx",
                 "test.en-de.en.bin", "code", "test.ref.detok.de"):
        assert (data / name).is_file(), name
    text = work / "wmt14_en_de"
    lines = {s: len((text / f"{s}.en").read_text(encoding="utf-8").splitlines()) for s in ("train", "valid", "test")}
    # 80 raw pairs, every 10th valid; cleaning drops at least the empty pair and the 25-to-3-token one
    assert 60 <= lines["valid"] + lines["train"] <= 78 and lines["valid"] >= 6 and lines["test"] == 10
    assert "@-@" in (text / "test.en").read_text(encoding="utf-8")  # tokenizer -a
    assert (data / "test.ref.detok.de").read_text(encoding="utf-8").splitlines()[3].startswith("„Wir sind")
    for run, criterion in (("baseline", "label_smoothed_cross_entropy"),
                           ("rdrop", "rdrop_label_smoothed_cross_entropy --rdrop-alpha 5")):
        assert f"--criterion {criterion}" in out
        scores = json.loads((work / "results" / f"wmt14_en_de_{run}" / "scores.json").read_text())
        assert scores["sentences"] == 10
        assert 0 <= scores["tokenized_compound_split"]["bleu"] <= 100
        assert scores["detokenized_sacrebleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        gen = (work / "results" / f"wmt14_en_de_{run}" / "generate-test.txt").read_text(encoding="utf-8")
        assert gen.count("\nH-") + gen.startswith("H-") == 10
    assert "--update-freq 16" in out and "GPUs x update-freq = 16" in out
    assert "--arch transformer_vaswani_wmt_en_de_big --share-all-embeddings" in out
    assert "results (newstest2014, en-de" in out


def test_wmt14_smoke_averaged_checkpoint_is_the_mean_of_the_last_two(wmt14_en_de_smoke):
    work = wmt14_en_de_smoke[0]
    ckpt = work / "checkpoints" / "wmt14_en_de_rdrop"
    load = lambda p: avg.load_checkpoint(str(p))  # noqa: E731
    a, b = load(ckpt / "checkpoint3.pt"), load(ckpt / "checkpoint2.pt")
    averaged = load(work / "results" / "wmt14_en_de_rdrop" / "checkpoint.avg2.pt")
    assert list(averaged["model"]) == list(a["model"])
    for k, v in averaged["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a["model"][k].double() + b["model"][k].double()).div(2).float())
    assert averaged["optimizer_history"] == a["optimizer_history"]


def test_wmt14_smoke_refuses_to_overwrite_and_train_refuses_existing_checkpoints(wmt14_en_de_smoke, tmp_path):
    work = wmt14_en_de_smoke[0]
    env = dict(SMOKE=1, DATA_BIN=work / "data-bin" / "wmt14_en_de")
    proc = run_script(os.path.join(TRANSLATION, "evaluate-wmt14.sh"), "en-de",
                      work / "checkpoints" / "wmt14_en_de_rdrop", cwd=tmp_path,
                      RESULTS=work / "results" / "wmt14_en_de_rdrop", **env)
    assert proc.returncode == 2 and "already exists and would be overwritten" in proc.stderr
    proc = run_script(os.path.join(TRANSLATION, "train-wmt14.sh"), "en-de", "rdrop", cwd=tmp_path,
                      SAVE_DIR=work / "checkpoints" / "wmt14_en_de_rdrop", **env)
    assert proc.returncode == 2 and "RESUME=1" in proc.stderr
    assert (work / "checkpoints" / "wmt14_en_de_rdrop" / "checkpoint3.pt").exists()


def test_two_nodes_train_with_the_multi_node_command(wmt14_en_de_smoke, tmp_path):
    """NNODES=2: the command each node runs, here both "nodes" on this machine, one rank each."""
    work = wmt14_en_de_smoke[0]
    script = os.path.join(TRANSLATION, "train-wmt14.sh")
    used = []

    def both_nodes(port):
        used.append(port)
        env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", SMOKE="1", NNODES="2",
                   NPROC_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   DATA_BIN=str(work / "data-bin" / "wmt14_en_de"), SAVE_DIR=str(tmp_path / "ckpt"))
        procs = [subprocess.Popen(["bash", script, "en-de", "rdrop", "--max-epoch", "1"], cwd=tmp_path,
                                  env=dict(env, NODE_RANK=str(rank)), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        both_nodes.outs = outs
        return max(p.returncode for p in procs), "\n".join(outs)

    code, out = on_a_free_port(both_nodes)
    assert code == 0, out[-5000:]
    outs = both_nodes.outs
    assert "2 training process(es) x --update-freq 8" in outs[0]
    assert f"--nnodes 2 --node-rank 1 --master-addr 127.0.0.1 --master-port {used[-1]}" in outs[1]
    assert "initialized host" in outs[0] and "rdrop_kl" in outs[0]
    assert (tmp_path / "ckpt" / "checkpoint1.pt").exists()


def test_wmt14_en_fr_smoke_with_newstest2013_as_valid(tmp_path):
    proc = ok(run_script(os.path.join(TRANSLATION, "run-wmt14.sh"), "en-fr", cwd=tmp_path, SMOKE=1,
                         WORK=tmp_path / "w", RUNS="rdrop", VALID="newstest2013"))
    assert "giga-fren.release2.fixed.en" in proc.stdout  # read from the .gz
    assert "valid = newstest2013" in proc.stdout
    assert len((tmp_path / "w" / "wmt14_en_fr" / "valid.fr").read_text(encoding="utf-8").splitlines()) == 8
    scores = json.loads((tmp_path / "w" / "results" / "wmt14_en_fr_rdrop" / "scores.json").read_text())
    assert scores["sentences"] == 10 and "detokenized_sacrebleu" in scores


@pytest.mark.parametrize("model,arch,update_freq,criteria", [
    ("transformer", "transformer_lm_gpt", 32,
     {"baseline": "--criterion cross_entropy", "rdrop": "--criterion rdrop_cross_entropy --rdrop-alpha 1.0"}),
    ("adaptive", "rdrop_transformer_lm_wiki103", 24,
     {"baseline": "--criterion adaptive_loss", "rdrop": "--criterion rdrop_adaptive_loss --rdrop-alpha 1.0"}),
])
def test_wikitext103_smoke_each_model(model, arch, update_freq, criteria, tmp_path):
    # one model per test (MODELS=...), so that parallel test workers can take one each
    proc = ok(run_script(os.path.join(LM, "run-wikitext103.sh"), cwd=tmp_path, SMOKE=1,
                         WORK=tmp_path / "w", MODELS=model))
    out = proc.stdout
    for run, criterion in criteria.items():
        assert criterion in out
        ppl = json.loads((tmp_path / "w" / "results" / f"wikitext103_{model}_{run}" / "ppl.json").read_text())
        assert set(ppl) == {"valid", "test"}
        assert all(1 < v < 1e6 for v in ppl.values()), (model, run, ppl)
    assert f"--arch {arch} " in out and f"--update-freq {update_freq}" in out
    if model == "adaptive":
        assert "--ddp-backend legacy_ddp" in out  # adaptive_loss and R-Drop's adaptive criterion need it
    assert "--context-window" in out
