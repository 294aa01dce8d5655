//! A task's request queue, shared by the engine's handles, whose requests carry the reply a
//! caller waits for.
//!
//! A request sent just as its task ends can slip into the queue after the task's receiver has
//! gone: tokio keeps such a message (and the reply sender in it) until the last sender of
//! the channel is dropped, and the engine holds one for as long as it lives. Its caller would
//! wait for a reply that never comes. So when a task's [`Inbox`] is dropped (the task ended,
//! or was aborted), the engine's sender is swapped for a closed one: the callers' own copies
//! are gone once their send returns, the channel with them, and the caller is told the task
//! stopped.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::time::Instant as Deadline;

/// The sending end of a task's queue; a new task (an executor after a restore) gets a new
/// channel.
pub struct Queue<T> {
    current: Arc<Mutex<Current<T>>>,
}

struct Current<T> {
    sender: mpsc::Sender<T>,
    /// Which channel this is, so that an old task's end never closes its successor's.
    generation: u64,
    capacity: usize,
}

/// A task's end of its [`Queue`]: the receiver, which closes the queue when dropped.
pub struct Inbox<T> {
    receiver: mpsc::Receiver<T>,
    current: Arc<Mutex<Current<T>>>,
    generation: u64,
}

impl<T> Queue<T> {
    /// A queue holding up to `capacity` requests, and its task's end.
    pub fn new(capacity: usize) -> (Self, Inbox<T>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let current = Arc::new(Mutex::new(Current {
            sender,
            generation: 0,
            capacity,
        }));
        let inbox = Inbox {
            receiver,
            current: current.clone(),
            generation: 0,
        };
        (Self { current }, inbox)
    }

    /// A queue no task reads yet: every send is refused.
    pub fn closed(capacity: usize) -> Self {
        Self::new(capacity).0
    }

    /// A new channel for the task that takes over; the old one is dropped with its task.
    pub fn renew(&self) -> Inbox<T> {
        let mut current = lock(&self.current);
        let (sender, receiver) = mpsc::channel(current.capacity);
        current.sender = sender;
        current.generation += 1;
        Inbox {
            receiver,
            current: self.current.clone(),
            generation: current.generation,
        }
    }

    /// Whether a task ever took the queue over with [`Self::renew`] (a new engine's executor
    /// starts once its first record is saved).
    pub fn renewed(&self) -> bool {
        lock(&self.current).generation > 0
    }

    /// Where to send a request now. Keep it only for the send: a copy kept longer would keep
    /// a request that slipped in as the task ended, and its caller waiting.
    pub fn sender(&self) -> mpsc::Sender<T> {
        lock(&self.current).sender.clone()
    }
}

impl<T> Inbox<T> {
    /// Until `until`, hands each request that comes to `answer`: a task that cannot act on
    /// them yet (its store cannot save) still answers at once.
    pub async fn answer_until(&mut self, until: Deadline, mut answer: impl FnMut(T)) {
        let deadline = tokio::time::sleep_until(until);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                Some(request) = self.receiver.recv() => answer(request),
            }
        }
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        let mut current = lock(&self.current);
        if current.generation == self.generation {
            current.sender = mpsc::channel(current.capacity).0;
        }
    }
}

impl<T> Deref for Inbox<T> {
    type Target = mpsc::Receiver<T>;

    fn deref(&self) -> &Self::Target {
        &self.receiver
    }
}

impl<T> DerefMut for Inbox<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.receiver
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::{self, error::TryRecvError};

    use super::Queue;

    #[tokio::test]
    async fn a_request_that_slips_in_as_its_task_ends_is_dropped_and_its_caller_told() {
        let (queue, inbox) = Queue::<oneshot::Sender<()>>::new(4);
        let (reply, mut answer) = oneshot::channel();
        let sender = queue.sender();
        // Room reserved while the task still reads; the request put in once it has ended.
        let permit = sender.reserve().await.expect("the task still reads");
        drop(inbox);
        permit.send(reply);
        drop(sender);
        assert_eq!(
            answer.try_recv(),
            Err(TryRecvError::Closed),
            "the reply was dropped with the request"
        );
        assert!(queue.sender().send(oneshot::channel().0).await.is_err());
    }

    #[tokio::test]
    async fn an_old_task_ending_leaves_its_successor_s_queue_open() {
        let (queue, first) = Queue::<u8>::new(1);
        let mut second = queue.renew();
        drop(first);
        queue.sender().send(7).await.expect("the new task reads");
        assert_eq!(second.recv().await, Some(7));
        drop(second);
        assert!(queue.sender().send(8).await.is_err());
    }
}
