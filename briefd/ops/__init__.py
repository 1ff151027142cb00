"""Operations: what the people who run briefd see.

Event publication and the event log, logging and redaction, the console and the report.
"""
