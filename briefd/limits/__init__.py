"""The rate limiter's pure policies, kept apart from the actor so each is tested on its own.

``order`` (which waiting request goes next), ``window`` (how many calls may be in
flight, AIMD), ``gcra`` (requests and tokens per minute), ``headers`` (what the
server says about its budgets), ``learn`` (a budget's refill rate from those
headers), ``pacing`` (all of them for one endpoint), ``lanes`` (one pacing per
endpoint under the global K). None of them reads a clock it was not given or
talks to an actor.
"""
