"""Incidents: findings grouped per principal (or source IP) and horizon, with a workflow status.

Above ``detect`` (which produces findings) and below ``delivery`` (which sends incidents).
"""
