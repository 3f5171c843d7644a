"""The built-in algorithms, written on the learner API (learners.api) and the public building blocks only."""
