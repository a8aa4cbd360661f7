"""Fake bnstats plugins (tests only): ``export`` (a format), ``source`` (an input kind), ``statistic``."""
