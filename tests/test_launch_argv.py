"""Reading a fairseq command line: both spellings of a flag, the last one wins, aliases."""

from rdrop_seq.launch.argv import flag_value, has_flag


def test_flag_values_in_both_spellings_last_one_wins():
    argv = ["--distributed-world-size", "2", "--x", "--distributed-world-size=4"]
    assert flag_value(argv, "--distributed-world-size") == "4"
    assert flag_value(argv, "--distributed-rank") is None
    assert has_flag(["--cpu"], "--cpu") and not has_flag(["--cpu-offload"], "--cpu")
    assert has_flag(["--local_rank=3"], "--device-id")
    assert flag_value(["--local_rank", "3"], "--device-id") == "3"
