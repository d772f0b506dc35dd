"""The kopf operator: thin handlers over pure planning, rendering and accounting."""
