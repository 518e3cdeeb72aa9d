"""The chat-completions proxy: request parsing, stream assembly and keeping what is stored."""
