"""One chat-completion call.

Its deadline and abort, the error tree, the retry policy, and the document it yields;
the body's content coding (``encoding``) and the upstream text made safe as it enters
(``text``).
"""
