"""Output: the report (schema, validated reading, merge), exports into frameworks' forms, and plots."""
