"""modules/call_queue.py: queue_lock, the lock generations and the API share."""
from modules import fifo_lock

queue_lock = fifo_lock.FIFOLock()
