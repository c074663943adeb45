"""Telling the team: messages to AMPLITUDE_ALERT_WEBHOOK_URL (Slack, Teams, or any HTTP endpoint).

`webhook.py` builds and posts a message, `messages.py` says what happened, `runs.py` reads a
failed run, and `sensors.py` holds the two sensors that send them.
"""
