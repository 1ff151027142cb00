"""The simulated OpenAI-compatible server (tests, demos, benchmarks): HTTP, faults and answers."""
