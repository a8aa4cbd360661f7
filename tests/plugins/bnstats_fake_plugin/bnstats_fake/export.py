"""A fake export format: ``channel,mean,std`` lines in unit scale (what a plugin's export is: one function)."""


def fake_csv(s: dict) -> str:
    """The report's statistics dict (as every export gets it) as CSV text."""
    rows = [f"{c},{m!r},{d!r}" for c, m, d in zip(s["channels"], s["mean"], s["std"])]
    return "channel,mean,std\n" + "\n".join(rows) + "\n"
