"""The platform's objects as its clients see them: one family per resource (``XCreate``, ``XUpdate``,
``XPublic``, ``Page[XPublic]``). The services return these and the API answers with them as they are; secrets and
server paths exist only on the tables and the services' own records, never here."""
