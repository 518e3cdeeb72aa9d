"""Quota and permission-health reports, and the requests that build them."""
