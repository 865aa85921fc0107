"""rank1's protocol core: prompts, templates, tokens, forced answers, the judging state machine; framework-free."""
