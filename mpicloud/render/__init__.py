"""Pure renderers: spec in, artifact out (scripts, templates, policies), no network."""
