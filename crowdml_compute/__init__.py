"""The compute side of crowdml: what turns (spec, data, coin) into one result digest.

Coin → keys (`keys`), canonical result encoding (`digest`), job specs (`spec`), environment
profiles (`profile`), verified datasets (`data`) and the job runner (`runner`). Nothing here
talks to a chain; the chain side (board, parties, agent, CLI) lives one level up.
"""
