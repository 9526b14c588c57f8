"""Progress display helpers shared by training, evaluation and prediction."""


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m07s`: a compact duration for progress lines and ETAs."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
