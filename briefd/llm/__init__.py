"""One chat-completion call.

Its deadline and abort, the error tree, the retry policy, and the document it yields.
"""
