"""Fixed prompts and a question set with known answers, to check that a fast chat engine answers like transformers.

Shared by tests/integration/test_fast_engine.py and tests/bench/bench_engines.py. The questions are plain facts a
135M-parameter instruct model mostly knows; a question counts as right when any accepted answer appears in the
reply (lower case). The score matters only as a comparison between engines on the same model.
"""

from __future__ import annotations

SYSTEM = "You are a helpful, concise assistant."

AGREEMENT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a database index is in two sentences.",
    "Give me three tips for a job interview.",
    "What does a bakery sell?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "List the days of the week.",
    "What is photosynthesis?",
    "Write one sentence about cats.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Suggest a name for a coffee shop.",
    "What is 12 plus 7?",
    "Describe a rainbow to a child.",
    "What are the primary colors?",
    "Why do we need sleep?",
    "Write a short thank-you note to a colleague.",
    "What is a noun?",
    "Give an example of a renewable energy source.",
    "How many continents are there?",
    "What is the boiling point of water in Celsius?",
]
"""At least 20 prompts whose greedy answers are compared token by token."""

QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of England?", ("london",)),
    ("What is the capital of the United States?", ("washington",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many days are in a week?", ("7", "seven")),
    ("How many months are in a year?", ("12", "twelve")),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("How many sides does a triangle have?", ("3", "three")),
    ("How many legs does a dog have?", ("4", "four")),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the opposite of up?", ("down",)),
    ("What is the opposite of day?", ("night",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What color is grass?", ("green",)),
    ("What color are bananas when they are ripe?", ("yellow",)),
    ("What is frozen water called?", ("ice",)),
    ("Which planet do we live on?", ("earth",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What star is at the center of our solar system?", ("sun",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "co2")),
    ("What do bees make?", ("honey",)),
    ("What animal is known as the king of the jungle?", ("lion",)),
    ("What is the chemical symbol for water?", ("h2o",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What language is spoken in Brazil?", ("portuguese",)),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("What is the freezing point of water in Celsius?", ("0", "zero")),
    ("What is the tallest mountain in the world?", ("everest",)),
    ("What do cows drink?", ("water",)),
    ("In which country are the pyramids of Giza?", ("egypt",)),
]
"""Questions with accepted answers (36)."""


def is_right(reply: str, answers: tuple[str, ...]) -> bool:
    """True when any accepted answer appears in the reply."""
    low = reply.lower()
    return any(a in low for a in answers)
