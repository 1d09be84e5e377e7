"""Fleet's builtin runtime: a small OpenAI-compatible HTTP server on transformers, run as its own process
(``python -m fleet.agent.runtimes.server``). torch is imported by that process only, never by the agent."""
