"""Lead scoring (DESIGN §4): the lead and criteria models, the LLM scorer, the rules scorer, the
explanation arithmetic and the thresholds. `service` is what the API and the workflow call."""
