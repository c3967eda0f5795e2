"""Every mode of the three demos builds training commands that fairseq's own parser accepts.

CI runs only the tiny modes end to end; this catches a misspelt flag or a bad
value in the long modes (quick, medium, full) before a user spends hours on them.
"""

import importlib
import itertools

import pytest

from examples.common.naming import results_stem

# the demos whose training commands take (args, setting, data-bin, ...); the classification demo's
# take the prepared data (its pre-trained checkpoint) and are tested on their own below
DEMOS = ("translation", "language_model")


def load_demo(name):
    return importlib.import_module(f"examples.{name}.demo")


def parse_with_fairseq(cmd):
    from fairseq import options

    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, input_args=cmd)


def parsed_run_command(demo, args, tmp_path, run="rdrop"):
    """The medium mode's training command of ``run`` (seed 1), as fairseq parses it."""
    cmd = demo.train_command(args, demo.MODES["medium"], str(tmp_path / "d"), demo.run_dir(args, run, 1), run)
    return parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):])


def mode_cases():
    for name in DEMOS:
        for mode in load_demo(name).MODES:
            yield pytest.param(name, mode, id=f"{name}-{mode}")


@pytest.mark.parametrize("name,mode", list(mode_cases()))
def test_every_mode_gives_commands_fairseq_accepts(name, mode, tmp_path):
    demo = load_demo(name)
    args = demo.parse_args(["--mode", mode, "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")])
    setting = demo.MODES[mode]
    parsed = {}
    for run in ("baseline", "rdrop"):
        cmd = demo.train_command(args, setting, str(tmp_path / "data-bin"), str(tmp_path / run), run)
        # drop the executable (a console script or [python, -m, ...])
        i = cmd.index(str(tmp_path / "data-bin"))
        parsed[run] = parse_with_fairseq(cmd[i:])
    base, rdrop = parsed["baseline"], parsed["rdrop"]
    assert rdrop.criterion.startswith("rdrop_") and not base.criterion.startswith("rdrop_")
    # the two runs differ in the criterion and, where the mode tuned each on its own, the dropout
    for key in ("arch", "lr", "max_epoch", "patience", "seed", "max_tokens", "warmup_updates"):
        assert getattr(base, key) == getattr(rdrop, key), key
    assert (base.dropout, rdrop.dropout) == (args.default_dropout_of["baseline"], args.default_dropout_of["rdrop"])
    train = setting["train"]
    assert base.max_epoch == train["max-epoch"]
    assert base.patience == train.get("patience", -1)
    if mode != "tiny":
        # every run that reports a result stops on early stopping, within a budget it should not reach
        assert base.patience > 0 and base.max_epoch >= 5 * base.patience


@pytest.mark.parametrize("mode", list(load_demo("classification").MODES))
def test_every_classification_mode_gives_fine_tuning_commands_fairseq_accepts(mode, tmp_path):
    demo = load_demo("classification")
    args = demo.parse_args(["--mode", mode, "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")])
    data = {"cls_bin": str(tmp_path / "cls"), "classes": 7, "pretrain": {"checkpoint": str(tmp_path / "pre.pt")}}
    parsed = {}
    for run in ("baseline", "rdrop"):
        cmd = demo.train_command(args, data, str(tmp_path / run), run, 3)
        parsed[run] = parse_with_fairseq(cmd[cmd.index(data["cls_bin"]):])
    base, rdrop = parsed["baseline"], parsed["rdrop"]
    assert (base.criterion, rdrop.criterion) == ("sentence_prediction", demo.RDROP_CRITERION)
    assert rdrop.rdrop_alpha == args.default_alpha
    for key in ("arch", "lr", "max_epoch", "patience", "seed", "batch_size", "num_classes", "finetune_from_model",
                "best_checkpoint_metric", "maximize_best_checkpoint_metric"):
        assert getattr(base, key) == getattr(rdrop, key), key
    assert (base.seed, base.num_classes, base.finetune_from_model) == (3, 7, data["pretrain"]["checkpoint"])
    assert base.best_checkpoint_metric == "accuracy" and base.maximize_best_checkpoint_metric
    train = demo.MODES[mode]["train"]
    assert base.max_epoch == train["max-epoch"] and base.patience == train.get("patience", -1)
    if mode != "tiny":
        assert base.patience > 0 and base.max_epoch >= 5 * base.patience


def test_overrides_reach_the_command(tmp_path):
    demo = load_demo("translation")
    args = demo.parse_args(["--mode", "medium", "--max-epoch", "7", "--patience", "2", "--alpha", "3",
                            "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")])
    cmd = demo.train_command(args, demo.MODES["medium"], str(tmp_path / "d"), str(tmp_path / "s"), "rdrop")
    parsed = parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):])
    assert (parsed.max_epoch, parsed.patience, parsed.rdrop_alpha) == (7, 2, 3.0)


@pytest.mark.parametrize("vocab_size,cutoffs", [(None, None), (10008, None), (6008, None), (6000, "1200,3600"),
                                                (1000, "200,600"), (8, "1,4")])
def test_lm_cutoffs_fit_the_dictionary(vocab_size, cutoffs, tmp_path):
    demo = load_demo("language_model")
    args = demo.parse_args(["--mode", "tiny", "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")])
    cmd = demo.train_command(args, demo.MODES["tiny"], str(tmp_path / "d"), str(tmp_path / "s"), "rdrop", vocab_size)
    parsed = parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):])
    # None: the architecture's own cutoffs, which the demo's ARCH_CUTOFFS must name
    expected = cutoffs or ",".join(map(str, demo.ARCH_CUTOFFS))
    assert parsed.adaptive_softmax_cutoff == parsed.adaptive_input_cutoff == expected
    assert int(expected.split(",")[-1]) < (vocab_size or 10008)  # fairseq needs the last below the size


@pytest.mark.parametrize("name", list(DEMOS))
def test_another_alpha_gets_its_own_run_dir_and_results_name(name, tmp_path):
    demo = load_demo(name)
    base = ["--mode", "medium", "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")]
    default = demo.parse_args(base)
    assert demo.run_dir(default, "rdrop", 1) == str(tmp_path / "w" / "rdrop-seed1")
    assert results_stem(default) == "medium"
    same = demo.parse_args(base + ["--alpha", str(float(default.alpha))])  # the default, spelt out
    assert demo.run_dir(same, "rdrop", 1) == str(tmp_path / "w" / "rdrop-seed1")

    other = demo.parse_args(base + ["--alpha", "0.5"])
    assert demo.run_dir(other, "rdrop", 1) == str(tmp_path / "w" / "rdrop-alpha0.5-seed1")
    assert demo.run_dir(other, "baseline", 1) == demo.run_dir(default, "baseline", 1)  # one baseline per sweep
    assert results_stem(other) == "medium-alpha0.5"


@pytest.mark.parametrize("name", list(DEMOS))
def test_another_dropout_gets_its_own_runs_and_results_name(name, tmp_path):
    demo = load_demo(name)
    base = ["--mode", "medium", "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")]

    def commands(argv):
        args = demo.parse_args(base + argv)
        demo.check_demo_args(args)
        cmds = {run: demo.train_command(args, demo.MODES["medium"], str(tmp_path / "d"),
                                        demo.run_dir(args, run, 1), run) for run in ("baseline", "rdrop")}
        return args, cmds, {run: parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):])
                            for run, cmd in cmds.items()}

    default, default_cmds, parsed = commands([])
    modes = default.default_dropout_of
    for run in ("baseline", "rdrop"):
        assert parsed[run].dropout == modes[run]
    # the defaults spelt out are the defaults: same runs, same commands (finished runs stay finished)
    same, same_cmds, _ = commands(["--baseline-dropout", str(modes["baseline"]), "--rdrop-dropout", str(modes["rdrop"])])
    assert same_cmds == default_cmds and results_stem(same) == "medium"

    assert 0.15 not in modes.values()  # what follows needs a dropout that is not the mode's
    other, _, parsed = commands(["--dropout", "0.15", "--alpha", "0.5"])
    assert parsed["baseline"].dropout == parsed["rdrop"].dropout == 0.15
    assert parsed["rdrop"].rdrop_alpha == 0.5
    assert demo.run_dir(other, "baseline", 1) == str(tmp_path / "w" / "baseline-dropout0.15-seed1")
    assert demo.run_dir(other, "rdrop", 1) == str(tmp_path / "w" / "rdrop-dropout0.15-alpha0.5-seed1")
    assert results_stem(other) == "medium-dropout0.15-alpha0.5"

    with pytest.raises(demo.DemoError, match="--dropout must be in"):
        demo.check_demo_args(demo.parse_args(base + ["--dropout", "1"]))
    with pytest.raises(demo.DemoError, match="--rdrop-dropout must be in"):
        demo.check_demo_args(demo.parse_args(base + ["--rdrop-dropout", "-0.1"]))


def test_lm_max_tokens_scales_the_schedule_and_names_its_runs(tmp_path):
    demo = load_demo("language_model")
    base = ["--mode", "full", "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")]
    train = demo.MODES["full"]["train"]

    def commands(argv):
        args = demo.parse_args(base + argv)
        demo.check_demo_args(args)
        cmds = {run: demo.train_command(args, demo.MODES["full"], str(tmp_path / "d"), demo.run_dir(args, run, 1), run)
                for run in ("baseline", "rdrop")}
        return args, cmds, {run: parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):]) for run, cmd in cmds.items()}

    default, default_cmds, parsed = commands([])
    assert parsed["baseline"].max_tokens == demo.MAX_TOKENS
    assert parsed["baseline"].lr == [float(train["lr"])]
    assert parsed["baseline"].warmup_updates == train["warmup-updates"]
    # the default spelt out is the default: same runs, same commands, same results name
    same, same_cmds, _ = commands(["--max-tokens", str(demo.MAX_TOKENS)])
    assert same_cmds == default_cmds and results_stem(same) == "full"

    n = 8 * demo.MAX_TOKENS
    other, _, parsed = commands(["--max-tokens", str(n), "--alpha", "0.5"])
    for run in ("baseline", "rdrop"):
        assert parsed[run].max_tokens == n
        # Adam's square-root rule, and warm-up over the same number of tokens
        assert parsed[run].lr == pytest.approx([float(train["lr"]) * 8 ** 0.5], rel=5e-3)  # 3 significant digits
        assert parsed[run].warmup_updates == train["warmup-updates"] // 8
    assert demo.run_dir(other, "baseline", 1) == str(tmp_path / "w" / f"baseline-tokens{n}-seed1")
    assert demo.run_dir(other, "rdrop", 1) == str(tmp_path / "w" / f"rdrop-tokens{n}-alpha0.5-seed1")
    assert results_stem(other) == f"full-tokens{n}-alpha0.5"

    too_small = demo.parse_args(base + ["--max-tokens", str(demo.MODES["full"]["tokens_per_sample"] - 1)])
    with pytest.raises(demo.DemoError, match="--max-tokens must hold at least one 128-token block"):
        demo.check_setup(too_small)


# every option that changes what a results file holds, with a value other than the default
NAMED = {
    "translation": [["--alpha", "1"], ["--dropout", "0.2"], ["--max-epoch", "9"], ["--patience", "2"],
                    ["--limit", "500"], ["--beam", "4"], ["--seeds", "1,2,3,4"], ["--text-dir", "x/corpus"],
                    ["--rdrop-dropout", "0.15"], ["--rdrop-flags=--rdrop-every 2"]],
    "language_model": [["--alpha", "0.5"], ["--dropout", "0.1"], ["--max-epoch", "9"], ["--patience", "2"],
                       ["--train-lines", "500"], ["--max-tokens", "4096"], ["--seeds", "3"],
                       ["--text-dir", "x/corpus"], ["--rdrop-dropout", "0.15"], ["--rdrop-flags=--rdrop-every 2"]],
}


@pytest.mark.parametrize("name", list(DEMOS))
def test_every_combination_of_settings_has_a_results_name_of_its_own(name, tmp_path):
    demo = load_demo(name)
    options = NAMED[name]
    names = {}
    for k in range(len(options) + 1):
        for combo in itertools.combinations(options, k):
            argv = ["--mode", "medium"] + [a for option in combo for a in option]
            stem = results_stem(demo.parse_args(argv + ["--work-dir", str(tmp_path / "w")]))
            assert stem not in names, (stem, names.get(stem), combo)
            names[stem] = combo
    assert names and "medium" in names and len(names) == 2 ** len(options)


@pytest.mark.parametrize("name", list(DEMOS))
def test_seeds_default_to_the_modes_and_name_their_runs(name, tmp_path):
    demo = load_demo(name)
    base = ["--work-dir", str(tmp_path / "w")]
    for mode, setting in demo.MODES.items():
        assert demo.parse_args(["--mode", mode] + base).seeds == tuple(setting["seeds"])
    assert len(demo.MODES["quick"]["seeds"]) >= 2 and len(demo.MODES["medium"]["seeds"]) >= 3
    args = demo.parse_args(["--mode", "medium", "--seeds", "4,2"] + base)
    assert args.seeds == (4, 2) and results_stem(args) == "medium-seeds4_2"
    assert demo.run_dir(args, "rdrop", 2) == str(tmp_path / "w" / "rdrop-seed2")
    cmd = demo.train_command(args, demo.MODES["medium"], str(tmp_path / "d"), demo.run_dir(args, "rdrop", 2),
                             "rdrop", seed=2)
    assert parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):]).seed == 2
    with pytest.raises(SystemExit):
        demo.parse_args(["--mode", "medium", "--seeds", "1,1"] + base)


def test_translation_modes_pick_checkpoints_by_their_own_validation_metric(tmp_path):
    demo = load_demo("translation")
    for mode, setting in demo.MODES.items():
        args = demo.parse_args(["--mode", mode, "--work-dir", str(tmp_path / "w")])
        cmd = demo.train_command(args, setting, str(tmp_path / "d"), str(tmp_path / "s"), "rdrop")
        parsed = parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):])
        metric = setting.get("select", "bleu")
        assert parsed.best_checkpoint_metric == metric, mode
        assert parsed.eval_bleu == (metric == "bleu") and parsed.maximize_best_checkpoint_metric == (metric == "bleu")
        assert parsed.dropout == setting.get("rdrop_dropout", setting.get("dropout", demo.DROPOUT))
        assert parsed.dropout == args.default_dropout_of["rdrop"]
    assert demo.MODES["quick"]["select"] == "loss"


def tuned_modes():
    for name in DEMOS:
        for mode, setting in load_demo(name).MODES.items():
            if "chosen_by" in setting:
                yield pytest.param(name, mode, id=f"{name}-{mode}")


@pytest.mark.parametrize("name,mode", list(tuned_modes()))
def test_a_tuned_mode_trains_each_criterion_at_the_settings_its_search_rows_chose(name, mode, tmp_path):
    demo = load_demo(name)
    setting = demo.MODES[mode]
    chosen = setting["chosen_by"]
    assert setting["dropout"] == chosen["baseline"]["dropout"]
    assert setting["rdrop_dropout"] == chosen["rdrop"]["dropout"] and setting["alpha"] == chosen["rdrop"]["alpha"]
    for run in ("baseline", "rdrop"):
        # a choice is one of the values it was chosen among
        for key, among in chosen[run]["among"].items():
            assert chosen[run][key] in among, (run, key)
    args = demo.parse_args(["--mode", mode, "--work-dir", str(tmp_path / "w")])
    assert args.default_dropout_of == {"baseline": chosen["baseline"]["dropout"], "rdrop": chosen["rdrop"]["dropout"]}
    assert args.alpha == chosen["rdrop"]["alpha"]
    cmds = {run: demo.train_command(args, setting, str(tmp_path / "d"), demo.run_dir(args, run, 1), run)
            for run in ("baseline", "rdrop")}
    parsed = {run: parse_with_fairseq(cmd[cmd.index(str(tmp_path / "d")):]) for run, cmd in cmds.items()}
    assert parsed["baseline"].dropout == chosen["baseline"]["dropout"]
    assert (parsed["rdrop"].dropout, parsed["rdrop"].rdrop_alpha) == (chosen["rdrop"]["dropout"], chosen["rdrop"]["alpha"])


@pytest.mark.parametrize("setting, run_name, stem, parsed_has", [
    (["--rdrop-dropout", "0.25"], "rdrop-dropout0.25", "medium-rdropout0.25", {"dropout": 0.25}),
    (["--rdrop-flags", "--rdrop-fraction 0.5 --rdrop-share-encoder"], "rdrop-fraction0.5-share-encoder",
     "medium-fraction0.5-share-encoder", {"rdrop_fraction": 0.5, "rdrop_share_encoder": True}),
], ids=["rdrop-dropout", "rdrop-flags"])
@pytest.mark.parametrize("name", list(DEMOS))
def test_another_rdrop_setting_trains_rdrop_runs_of_its_own_beside_the_shared_baselines(
        name, setting, run_name, stem, parsed_has, tmp_path):
    """R-Drop at its own dropout (--rdrop-dropout) or with more R-Drop flags (--rdrop-flags):
    its R-Drop runs and results file are its own, the baselines the mode's."""
    demo = load_demo(name)
    base = ["--mode", "medium", "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")]
    default = demo.parse_args(base)
    args = demo.parse_args(base + setting)
    assert demo.run_dir(args, "baseline", 1) == demo.run_dir(default, "baseline", 1)
    assert demo.run_dir(args, "rdrop", 1) == str(tmp_path / "w" / f"{run_name}-seed1")
    assert results_stem(args) == stem
    parsed = parsed_run_command(demo, args, tmp_path)
    assert {key: getattr(parsed, key) for key in parsed_has} == parsed_has


@pytest.mark.parametrize("name", list(DEMOS))
def test_the_baseline_can_train_at_its_own_dropout_and_bad_rdrop_flags_are_refused(name, tmp_path):
    demo = load_demo(name)
    base = ["--mode", "medium", "--work-dir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")]
    both = demo.parse_args(base + ["--baseline-dropout", "0.15", "--rdrop-dropout", "0.25"])
    assert demo.run_dir(both, "baseline", 1) == str(tmp_path / "w" / "baseline-dropout0.15-seed1")
    assert results_stem(both) == "medium-bdropout0.15-rdropout0.25"
    assert parsed_run_command(demo, both, tmp_path, run="baseline").dropout == 0.15
    for bad in ("--lr 1", "--rdrop-alpha 2", "0.5"):
        with pytest.raises(SystemExit):
            demo.parse_args(base + ["--rdrop-flags", bad])
