"""Delivery: incidents to where people work (webhook, Slack, SNS, EventBridge, Security Hub,
OCSF), each at most once per incident version, with dead letters for what could not go.
"""
