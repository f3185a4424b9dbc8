"""Readable run names ("brave-otter-417"), for runs started without one."""

from __future__ import annotations

import random

_ADJECTIVES = (  # noqa: SIM905 - a word list reads better as text
    "agile able amber ancient bold brave bright calm clever cosmic crisp curious daring "
    "dapper eager fancy fearless gentle glowing graceful happy honest humble jolly keen kind "
    "lively lucky merry mighty nimble noble patient placid polite proud quick quiet rare "
    "regal rustic sharp shiny silent sleek smart snappy spry stellar sturdy sunny swift tidy "
    "vivid warm wise witty zealous"
).split()
_NOUNS = (  # noqa: SIM905 - a word list reads better as text
    "albatross ant badger bat bear beaver bee bison boar carp cat cheetah cod colt crab crane "
    "crow deer dingo dog dove duck eagle eel elk falcon ferret finch fox frog gecko goat "
    "goose hare hawk heron horse hound ibis jay koala lamb lark lemur lion lynx mink mole "
    "moose moth mouse newt otter owl panda pig pony quail ram raven robin seal shark sheep "
    "shrew skunk sloth snail stag stork swan tern tiger toad trout turtle vole whale wolf "
    "wombat wren yak zebra"
).split()

# A private generator: seeding the global `random` (common in training scripts for
# reproducibility) must not make every run of a sweep get the same name.
_rng = random.Random()


def random_run_name() -> str:
    """A name like "brave-otter-417"."""
    return f"{_rng.choice(_ADJECTIVES)}-{_rng.choice(_NOUNS)}-{_rng.randrange(1000)}"
