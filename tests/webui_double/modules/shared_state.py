"""modules/shared_state.py: State, the interrupt flag the extension's fallback policy sets."""


class State:
    interrupted = False

    def interrupt(self):
        self.interrupted = True
